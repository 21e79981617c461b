"""`fm2edge soup`: one model from the weights of several fine-tuned runs of one architecture (a model soup,
Wortsman et al., ICML 2022).

Runs fine-tuned from the same pretrained weights with different settings usually lie in one basin, so the average
of their weights is a model of the same size and speed that is often better than the best of them. "greedy" adds
the runs one at a time, best on validation first, and keeps each only when the soup's validation accuracy does not
drop; "uniform" averages them all. BatchNorm statistics do not average (the mean of running variances is not the
variance of the averaged network's activations), so they are estimated again on plain training images. The test
split is read once, on the soup.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fm2edge.config import SoupJob
from fm2edge.errors import Fm2EdgeError


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of state dicts of one architecture: floating-point tensors averaged (in fp32, cast
    back), integer buffers (BatchNorm's batch counters) taken from the first."""
    first = states[0]
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            out[key] = (sum(s[key].detach().float().cpu() for s in states) / len(states)).to(value.dtype)
        else:
            out[key] = value.detach().cpu().clone()
    return out


@torch.no_grad()
def recalibrate_batchnorm(model, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """BatchNorm running statistics estimated again on ``images`` (uint8, through the model's own
    preprocessing): PyTorch's ``torch.optim.swa_utils.update_bn``, which resets them and takes a cumulative
    average over the batches (a model without BatchNorm is left as it is). Leaves the model in eval mode."""
    from torch.optim.swa_utils import update_bn

    from fm2edge.device import move

    batches = (model.preprocess(move(images[i:i + batch_size], device)) for i in range(0, len(images), batch_size))
    update_bn(batches, model)
    model.eval()


def saved_models(runs: list[str]) -> dict[str, Path]:
    """The run folders, each checked to hold a saved model (before any data is read)."""
    from fm2edge.models.io import is_model_folder

    folders = {run: Path(run) for run in runs}
    for run, folder in folders.items():
        if not is_model_folder(folder):
            raise Fm2EdgeError(f"soup.runs: '{run}' holds no fm2edge model (model.json missing); give run folders of "
                               f"`fm2edge finetune`, `train` or `distill`")
    return folders


def ingredients(runs: list[str], class_names: list[str]) -> dict[str, Path]:
    """The run folders, checked: each holds a model, all of one architecture and of the data's classes."""
    from fm2edge.models.io import class_names_of_run, model_meta

    folders = saved_models(runs)
    metas = {}
    for run, folder in folders.items():
        metas[run] = model_meta(folder)
        if class_names_of_run(folder) != list(class_names):
            raise Fm2EdgeError(f"soup.runs: '{run}' was trained on classes {class_names_of_run(folder)}, the data has "
                               f"{list(class_names)}; average runs trained on this data's classes")
    names = {(m["name"], m["num_classes"]) for m in metas.values()}
    if len(names) > 1:
        raise Fm2EdgeError(f"soup.runs are of different architectures ({sorted(n for n, _ in names)}); weights "
                           f"average only within one architecture fine-tuned from the same start")
    return folders


def check_shapes(models: dict) -> None:
    """Every model's weights have the first one's names and shapes (a ViT trained at another input size has other
    position embeddings, for one), or a clear error."""
    first_run, first = next(iter(models.items()))
    shapes = {k: tuple(v.shape) for k, v in first.state_dict().items()}
    for run, model in models.items():
        other = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if other != shapes:
            diff = sorted(k for k in shapes.keys() | other.keys() if shapes.get(k) != other.get(k))
            raise Fm2EdgeError(f"soup.runs: the weights of '{run}' differ in shape from those of '{first_run}' "
                               f"({', '.join(diff[:3])}); a soup averages runs of one architecture at one input size")


def greedy(order: list[str], alone: dict[str, float], cook, score) -> tuple[list[str], object, float, list[dict]]:
    """Wortsman et al.'s greedy soup: start from the first run of ``order`` (the best alone), try each further run
    in turn and keep it when ``score(cook(kept + [run]))`` is at least the soup's score so far. Returns the kept
    runs, the soup (None when no run joined the first), its score and one step per run tried."""
    from tqdm.auto import tqdm

    kept, soup, best = [order[0]], None, alone[order[0]]
    steps = [{"run": order[0], "alone": best, "soup": best, "kept": True}]
    for run in tqdm(order[1:], desc="greedy soup", unit="run", leave=False):
        trial = cook(kept + [run])
        acc = score(trial)
        steps.append({"run": run, "alone": alone[run], "soup": acc, "kept": acc >= best})
        tqdm.write(f"soup + {run}: validation {100 * acc:.2f}% against {100 * best:.2f}% "
                   f"({'kept' if acc >= best else 'left out'})")
        if acc >= best:
            kept, soup, best = kept + [run], trial, acc
    return kept, soup, best, steps


def soup_job(job: SoupJob) -> dict:
    from fm2edge.config import to_dict
    from fm2edge.models.io import load_classifier, save_classifier
    from fm2edge.report import plots
    from fm2edge.report.metrics import accuracy, balanced_accuracy
    from fm2edge.report.write import save_figure
    from fm2edge.results import start_stage
    from fm2edge.train import predict

    cfg = job.soup
    if len(cfg.runs) < 2:
        raise Fm2EdgeError(f"a soup averages at least two runs and --soup.runs names {len(cfg.runs)}; give the run "
                           f"folders, e.g. --soup.runs [runs/a/full,runs/b/full]")
    saved_models(cfg.runs)
    session = start_stage(job.data, cfg.device, cfg.precision)
    if cfg.method == "greedy" and session.val is None:
        raise Fm2EdgeError("a greedy soup chooses on validation images and this data has none; give a validation "
                           "split (--data.val_fraction, --data.val_split) or use --soup.method uniform")
    folders = ingredients(cfg.runs, session.test.class_names)
    device = session.device

    def val_logits(model):
        if session.val is None:
            return None
        return predict(model.to(device), session.val, cfg.batch_size, device, accelerator=session.accelerator)

    def val_acc(model) -> float | None:
        logits = val_logits(model)
        return None if logits is None else accuracy(logits, session.val.labels)

    models = {run: load_classifier(folder) for run, folder in folders.items()}
    check_shapes(models)
    recal = session.train.images[:cfg.bn_images]

    def cook(names: list[str]):
        model = load_classifier(folders[names[0]])  # the architecture and preprocessing of the first (best)
        model.load_state_dict(average_weights([models[n].state_dict() for n in names]))
        if cfg.batchnorm == "recalibrate":
            recalibrate_batchnorm(model.to(device), recal, cfg.batch_size, device)
        return model.to(device).eval()

    with session.open(job.run, "soup") as run:  # opened first: an existing folder stops the job before any work
        from tqdm.auto import tqdm

        alone = {name: val_acc(m) for name, m in tqdm(models.items(), desc="each run alone on validation",
                                                      unit="run", leave=False)}
        if cfg.method == "greedy":
            order = sorted(models, key=lambda r: -alone[r])  # stable: the order given breaks ties
            kept, soup, best, steps = greedy(order, alone, cook, val_acc)
            soup = soup if soup is not None else models[order[0]].to(device)
        else:
            kept, soup = list(models), cook(list(models))
        soup_val = val_logits(soup)  # once: its accuracy (uniform) and its loss
        if cfg.method == "uniform":
            best = None if soup_val is None else accuracy(soup_val, session.val.labels)
            steps = [{"run": name, "alone": alone[name], "soup": best, "kept": True} for name in kept]
        logits = (predict(soup, session.test, cfg.batch_size, device, accelerator=session.accelerator)
                  if cfg.score_test else None)
        test_acc = accuracy(logits, session.test.labels) if logits is not None else None
        val_loss = (None if soup_val is None
                    else float(torch.nn.functional.cross_entropy(soup_val, session.val.labels.long())))
        val_balanced = (None if soup_val is None
                        else balanced_accuracy(soup_val.argmax(1), session.val.labels))
        results = {"method": cfg.method, "ingredients": kept, "steps": steps, "val_acc": best, "val_loss": val_loss,
                   "val_balanced_acc": val_balanced,
                   "test_acc": test_acc, "batchnorm": cfg.batchnorm,
                   "selected": {"on": f"{cfg.method} soup of {len(kept)} runs", "val_acc": best, "epoch": None},
                   "val_acc_alone": alone,
                   "bn_images": len(recal) if cfg.batchnorm == "recalibrate" else 0, "data": job.data.source,
                   "parameters": sum(p.numel() for p in soup.parameters())}
        if session.is_main:
            run.write_config(to_dict(job))
            save_classifier(soup, run.path)
            if logits is not None:
                run.write_predictions(logits.numpy(), session.test.labels.numpy(), session.test.class_names)
            run.write_metrics("soup", results)
            run.log_summary(results)
            if session.val is not None:
                save_figure(plots.soup_steps(steps, f"{cfg.method} soup of {soup.name}", cfg.method == "uniform"),
                            run.file("plots", "soup.png"))
            shown = f"validation {100 * best:.2f}%, " if best is not None else ""
            tested = f"test accuracy {100 * test_acc:.2f}%" if test_acc is not None else "test split unread"
            print(f"{cfg.method} soup of {len(kept)} of {len(cfg.runs)} runs: {shown}{tested} | results in "
                  f"{run.path}")
    return results
