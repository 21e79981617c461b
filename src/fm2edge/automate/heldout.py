"""The unlabelled images of an `fm2edge auto` run: the pool the students distil on, and, when validation is too
small to rank candidates, a set of them held out of training on which each student's agreement with the teacher
ranks the candidates instead.

Why agreement: a validation split of 20 images knows accuracy to about +-20 points, while the students it must
rank differ by 2-3. The teacher's labels on 1,000 images it never trained a student on rank them to about +-2
points, and rank them as their accuracy does: on the cat/dog photos, the Lite0 students of two runs ranked the same
by their agreement with the teacher on 800 photos as by their accuracy on the true labels of those photos
(docs: auto). What it cannot do is rank a student above the teacher it is measured against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Unlabelled images held out of training to rank students when validation is too small: at most HELD_OUT_MOST, at
# most HELD_OUT_SHARE of the pool, and none when that is under HELD_OUT_FEWEST (too few to rank better than the
# validation split would).
HELD_OUT_MOST = 1000
HELD_OUT_SHARE = 0.2
HELD_OUT_FEWEST = 200


def held_out_count(available: int, noisy: bool) -> int:
    """How many of ``available`` unlabelled images are held out to rank students: none when validation can rank
    them (``noisy`` False) or the pool is too small to spare HELD_OUT_FEWEST."""
    n = min(HELD_OUT_MOST, int(HELD_OUT_SHARE * available)) if noisy else 0
    return n if n >= HELD_OUT_FEWEST else 0


def ranking_pool_text(available: int, given: bool) -> str:
    """What to do where validation is too small to rank the students and no images could be held out for it:
    ``available`` unlabelled images in the pool, ``given`` whether the user named one."""
    needed = math.ceil(HELD_OUT_FEWEST / HELD_OUT_SHARE)
    rank = f"{HELD_OUT_FEWEST} of them are held out to rank the students on instead"
    if given and available < needed:
        return f"the unlabelled pool holds {available:,} images; with {needed:,} or more, {rank}"
    return f"add unlabelled images, --auto.unlabeled_source DIR ({needed:,} or more): {rank}"


def unlabeled_pool(job, train, n: int | None = None):
    """The unlabelled images the students may distil on, as the distill stage takes them (``n`` of them, all when
    None): ``--auto.unlabeled_source``'s (a seeded sample), or the training images the labelled selection leaves out
    (the first ``n``); None when there are none."""
    if job.auto.unlabeled_source:
        from fm2edge.data import load_unlabeled_source
        from fm2edge.distill.teacher import limited

        return limited(load_unlabeled_source(job.auto.unlabeled_source, job.data, train.image_size), n)
    if job.auto.unlabeled_left_out:
        from fm2edge.data import load_unlabeled

        return load_unlabeled(job.data, n)
    return None


def held_out_images(job, train, n: int):
    """The ``n`` unlabelled images held out of training: those `unlabeled_pool` takes last, so none of them is
    among the students' while the plan takes at most all but ``n``."""
    if job.auto.unlabeled_source:
        from fm2edge.data import load_unlabeled_source
        from fm2edge.distill.teacher import held_back

        return held_back(load_unlabeled_source(job.auto.unlabeled_source, job.data, train.image_size), n)
    from fm2edge.data import load_unlabeled

    return load_unlabeled(job.data, n, last=True)


def predicted_labels(folder: str, images, device, graphs: Path | None = None) -> np.ndarray:
    """A run folder's classifier's labels for ``images`` (preprocessed as the model expects); with ``graphs``, a
    teacher's graphs folder, through its ONNX Runtime graph where it has one (as its cached outputs are made)."""
    from fm2edge.distill.teacher import teacher_graph, teacher_logits
    from fm2edge.models.io import load_classifier
    from fm2edge.train import predict

    model = load_classifier(folder).to(device)
    if graphs is None:
        return predict(model, images, 64, device).argmax(1).numpy()
    return teacher_logits(model, images, device, teacher_graph(model, "auto", device, None, graphs)).argmax(1).numpy()


def agreement_share(labels: np.ndarray, teacher_labels: list[int]) -> float:
    """The share of ``labels`` that are the teacher's."""
    return float((np.asarray(labels) == np.asarray(teacher_labels)).mean())


def agreement(folder: str, images, teacher_labels: list[int], device) -> float:
    """The share of ``images`` on which the classifier in ``folder`` gives the teacher's label."""
    return agreement_share(predicted_labels(folder, images, device), teacher_labels)
