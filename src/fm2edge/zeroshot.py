"""Zero-shot classification with CLIP-style models (no training: class names as prompts).

Class names are put into prompt templates, embedded by the text tower, averaged over templates and normalised;
the result becomes the linear head of the image tower (``logit_scale * text_embedding``, plus SigLIP's bias), so
the zero-shot model is an ordinary :class:`~fm2edge.models.Classifier`: it is evaluated, saved and used as a
label-free teacher like any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fm2edge.config import ZeroShotJob
from fm2edge.errors import Fm2EdgeError


@torch.inference_mode()
def text_head(model, tokenizer, class_names: list[str], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) of the zero-shot head: scaled, template-averaged, normalised text embeddings."""
    weights = []
    for name in class_names:
        prompts = [t.format(name) for t in templates]
        tokens = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                           max_length=getattr(model.config.text_config, "max_position_embeddings", 77))
        out = model.get_text_features(**{k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
        emb = F.normalize((out.pooler_output if hasattr(out, "pooler_output") else out).float(), dim=-1)
        weights.append(F.normalize(emb.mean(0), dim=-1))
    scale = model.logit_scale.exp().float() if hasattr(model, "logit_scale") else torch.tensor(100.0)
    bias = model.logit_bias.float() if hasattr(model, "logit_bias") else torch.zeros(1)
    w = torch.stack(weights) * scale
    return w, bias.expand(len(class_names)).clone()


def zeroshot_classifier(job: ZeroShotJob, class_names: list[str]):
    from transformers import AutoTokenizer

    from fm2edge.models import create_model

    if not job.model.name.startswith("clip:"):
        raise Fm2EdgeError(f"zero-shot needs an image-text model named clip:<id or path>, got '{job.model.name}'")
    names = job.zeroshot.class_names or class_names
    if len(names) != len(class_names):
        raise Fm2EdgeError(f"zeroshot.class_names has {len(names)} names but the dataset has {len(class_names)} "
                           f"classes; give one name per class, in the dataset's order")
    clf = create_model(job.model, len(names))
    path = job.model.name.split(":", 1)[1]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise Fm2EdgeError(f"cannot load the tokenizer of '{path}' ({str(exc).splitlines()[0][:160]}); the folder "
                           f"needs the tokenizer files saved with the model") from exc
    w, b = text_head(clf.backbone.model, tokenizer, names, job.zeroshot.templates)
    clf.head.weight.data.copy_(w)
    clf.head.bias.data.copy_(b)
    return clf.eval(), names


def zeroshot_job(job: ZeroShotJob) -> dict:
    from fm2edge.config import to_dict
    from fm2edge.models.io import save_classifier
    from fm2edge.report.metrics import accuracy, per_class_accuracy
    from fm2edge.results import slug, start_stage
    from fm2edge.train import predict

    session = start_stage(job.data, job.zeroshot.device, job.zeroshot.precision)
    test = session.test
    clf, names = zeroshot_classifier(job, test.class_names)
    clf.to(session.device)
    with session.open(job.run, slug(f"zeroshot-{job.model.name}")) as run:
        logits = predict(clf, test, job.zeroshot.batch_size, session.device, accelerator=session.accelerator,
                         progress=True)
        preds = logits.argmax(1).numpy()
        labels = test.labels.numpy()
        acc = accuracy(preds, labels)
        results = {"model": job.model.name, "data": job.data.source, "n_test": len(labels), "test_acc": acc,
                   "templates": job.zeroshot.templates, "prompt_class_names": names,
                   "per_class_acc": dict(zip(test.class_names, per_class_accuracy(preds, labels, len(names)).tolist(),
                                             strict=True))}
        if session.is_main:
            run.write_config(to_dict(job))
            clf.class_names = list(test.class_names)
            save_classifier(clf, run.path)
            run.write_predictions(logits.numpy(), labels, test.class_names)
            run.write_metrics("zeroshot", results)
            run.log_summary(results)
            print(f"zero-shot test accuracy {100 * acc:.2f}% on {len(labels)} images ({len(job.zeroshot.templates)} "
                  f"templates) | results in {run.path}")
    return results
