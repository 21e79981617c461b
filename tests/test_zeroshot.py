"""Zero-shot classification with CLIP-style models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fm2edge.config import DataConfig, ModelConfig, RunConfig
from fm2edge.data import load_data


def test_zeroshot_head_is_scaled_mean_of_prompt_embeddings(tiny_clip, parquet_dir, tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    from fm2edge.config import ZeroShotConfig, ZeroShotJob
    from fm2edge.models.io import load_classifier
    from fm2edge.zeroshot import zeroshot_job

    templates = ["a photo of a {}.", "a {} thing"]
    job = ZeroShotJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name=f"clip:{tiny_clip}"),
                      zeroshot=ZeroShotConfig(templates=templates, device="cpu"),
                      run=RunConfig(root=str(tmp_path), name="zs"))
    results = zeroshot_job(job)
    assert 0.0 <= results["test_acc"] <= 1.0 and results["n_test"] == 32
    # the same numbers by hand, straight from the transformers model
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    _, _, test = load_data(DataConfig(source=str(parquet_dir)))
    clf = load_classifier(tmp_path / "zs")
    with torch.no_grad():
        text = []
        for name in ["red", "green", "blue", "grey"]:
            t = tok([tp.format(name) for tp in templates], padding="max_length", max_length=32, return_tensors="pt")
            e = model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"])
            e = getattr(e, "pooler_output", e)
            text.append(torch.nn.functional.normalize(torch.nn.functional.normalize(e, dim=-1).mean(0), dim=-1))
        img = model.get_image_features(pixel_values=clf.preprocess(test.images))
        img = torch.nn.functional.normalize(getattr(img, "pooler_output", img), dim=-1)
        expected = model.logit_scale.exp() * img @ torch.stack(text).T
        got = clf(clf.preprocess(test.images))
    assert torch.allclose(got, expected, atol=1e-4)
    saved = np.load(tmp_path / "zs" / "predictions.npz")
    assert np.array_equal(saved["preds"], expected.argmax(1).numpy())


def test_zeroshot_rejects_a_vision_only_model(tiny_dinov2, parquet_dir, tmp_path):
    from fm2edge.config import ZeroShotJob
    from fm2edge.errors import Fm2EdgeError
    from fm2edge.zeroshot import zeroshot_job

    with pytest.raises(Fm2EdgeError, match="not an image-text model"):
        zeroshot_job(ZeroShotJob(data=DataConfig(source=str(parquet_dir)),
                                 model=ModelConfig(name=f"clip:{tiny_dinov2}"), run=RunConfig(root=str(tmp_path))))
