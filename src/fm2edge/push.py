"""`fm2edge push RUN user/repo`: a run's model on the Hugging Face Hub, loadable by ``fm2edge.from_pretrained``,
``huggingface_hub``'s ``PyTorchModelHubMixin`` and, for timm students, ``timm.create_model``."""

from __future__ import annotations

from dataclasses import dataclass

from fm2edge.config import check


@dataclass
class PushJob:
    """`fm2edge push RUN REPO`: upload a run's model, model card, predictions and exported files to the Hub.

    Args:
        run: A run folder holding a model (of `fm2edge train`, `distill`, `probe`, `soup`, or `auto`'s best/).
        repo: The Hub repository to create or update, as user/name or organisation/name.
        private: Create the repository private.
        token: A Hub token with write access; empty uses HF_TOKEN or the one saved by `hf auth login`.
    """

    run: str
    repo: str
    private: bool = False
    token: str | None = None

    def __post_init__(self) -> None:
        check(self.repo.count("/") == 1 and all(self.repo.split("/")),
              f"push: the repository '{self.repo}' must read user/name (or organisation/name)")


def push_job(job: PushJob, api=None) -> str:
    """Upload ``job.run`` to ``job.repo`` and return its URL; ``api``: an ``huggingface_hub.HfApi`` to use."""
    from fm2edge.models.io import push_to_hub

    url = push_to_hub(job.run, job.repo, job.token, job.private, api=api)
    print(f"uploaded {job.run} to {url}; load it with fm2edge.from_pretrained(\"{job.repo}\")")
    return url
