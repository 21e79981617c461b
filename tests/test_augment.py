"""Augmentation as views, consistent teaching and cached (stored) views."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fm2edge.augment import COL, StoredViews, Views, draw_stored_views, draw_views, render, soft_targets
from fm2edge.config import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    DistillJob,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainJob,
)
from fm2edge.device import bf16_supported_on_cpu
from fm2edge.distill.task import DistillTask, distill_job, teacher_cache_dir
from fm2edge.distill.teacher import build_teacher_cache, load_teacher_cache
from fm2edge.models import create_model
from fm2edge.train import train_job

EVERY = AugmentConfig(crop="resized", flip=True, jitter=0.3, auto="trivial", mixup=0.4, cutmix=1.0)
KINDS = {"pad": AugmentConfig(crop="pad"), "resized": AugmentConfig(crop="resized"), "flip": AugmentConfig(flip=True),
         "jitter": AugmentConfig(jitter=0.4), "trivial": AugmentConfig(auto="trivial"),
         "randaugment": AugmentConfig(auto="randaugment"), "mixup": AugmentConfig(mixup=0.4),
         "cutmix": AugmentConfig(cutmix=1.0), "every": EVERY}


def images(n=12, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def views_and_render(cfg, seed, x, size=32):
    v = draw_views(len(x), cfg, torch.Generator().manual_seed(seed), len(x), x.shape[-1])
    partners = x[v.col("partner").long().clamp_min(0)]
    return v, render(x, v, size, partners)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_augmentation_is_deterministic_under_its_seed(kind):
    x = images()
    v1, a = views_and_render(KINDS[kind], 3, x)
    v2, b = views_and_render(KINDS[kind], 3, x)
    _, c = views_and_render(KINDS[kind], 4, x)
    assert torch.equal(v1.params, v2.params) and torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, c), "another seed, other views"
    assert not torch.equal(a, x), "the views change the images"


def test_views_render_exactly_what_they_say():
    x = images(6)
    plain = draw_views(6, AugmentConfig(), torch.Generator().manual_seed(0), 6, 32)
    assert torch.equal(render(x, plain, 32), x), "an identity view at the stored size is the image itself"
    pad = draw_views(6, AugmentConfig(crop="pad"), torch.Generator().manual_seed(2), 6, 32)
    padded = F.pad(x, (4, 4, 4, 4))
    for i, out in enumerate(render(x, pad, 32)):
        dy, dx = (round(float(pad.params[i, COL[c]]) * 32) for c in ("top", "left"))
        assert torch.equal(out, padded[i, :, 4 + dy:36 + dy, 4 + dx:36 + dx]), "a zero-padded shift"
    flips = plain.params.clone()
    flips[:, COL["flip"]] = 1
    assert torch.equal(render(x, Views(flips), 32), x.flip(-1))
    # CutMix: inside the box the partner's pixels, outside the image's own; lam is the share of its own pixels
    cut = plain.params.clone()
    cut[:, COL["partner"]] = torch.arange(6).roll(1).double()
    cut[:, [COL["cut_top"], COL["cut_left"], COL["cut_height"], COL["cut_width"]]] = torch.tensor([.25, .25, .5, .5],
                                                                                                   dtype=torch.float64)
    cut[:, COL["lam"]] = 0.75
    out = render(x, Views(cut), 32, x.roll(1, 0))
    assert torch.equal(out[:, :, 8:24, 8:24], x.roll(1, 0)[:, :, 8:24, 8:24])
    assert torch.equal(out[:, :, :8], x[:, :, :8])


def test_teacher_and_student_render_the_same_view_at_their_own_sizes():
    x = images(4)
    v, small = views_and_render(AugmentConfig(crop="resized", flip=True), 1, x, 32)
    large = render(x, v, 96, None)
    assert large.shape[-1] == 96
    # the same crop: shrinking the teacher's 96 px view gives (nearly) the student's 32 px view
    shrunk = F.interpolate(large.float(), size=32, mode="area")
    assert (shrunk - small.float()).abs().mean() < 6, "same crop and flip at both sizes"
    other, _ = views_and_render(AugmentConfig(crop="resized", flip=True), 2, x, 32)
    assert (F.interpolate(render(x, other, 96).float(), size=32, mode="area") - small.float()).abs().mean() > 10


def teacher_model(size=48):
    torch.manual_seed(5)
    return create_model(ModelConfig(name="student:small_cnn", image_size=size), 4)


def test_mixed_soft_targets_come_from_the_mixed_image():
    x = images(6)
    p = draw_views(6, AugmentConfig(), torch.Generator().manual_seed(0), 6, 32).params.clone()
    p[:, COL["partner"]] = torch.tensor([1, 0, 3, 2, 5, 4], dtype=torch.float64)
    p[:, COL["lam"]] = 0.6
    v, partners = Views(p), x[[1, 0, 3, 2, 5, 4]]
    teacher = teacher_model().eval()
    task = DistillTask(create_model(ModelConfig(name="student:small_cnn"), 4), teacher, DistillConfig(teacher="t"))
    t_logits, _ = task.teacher_outputs(x, v, partners)
    mixed = render(x, v, 48, partners)
    with torch.no_grad():
        direct = teacher(teacher.preprocess.normalise(mixed))
        blend = 0.6 * teacher(teacher.preprocess(x)) + 0.4 * teacher(teacher.preprocess(partners))
    assert torch.allclose(t_logits, direct, atol=1e-5), "the teacher's output on the mixed image"
    assert not torch.allclose(t_logits, blend, atol=1e-3), "not a blend of its outputs on the two images"
    labels = torch.tensor([0, 1, 2, 3, 0, -1])
    targets = soft_targets(labels, v, labels[[1, 0, 3, 2, 5, 4]], 4)
    assert torch.allclose(targets[0], torch.tensor([0.6, 0.4, 0.0, 0.0]))
    assert torch.equal(targets[4], torch.zeros(4)), "mixed with an unlabelled image: no label target"


@pytest.mark.parametrize("features", [False, True])
def test_a_replayed_stored_view_equals_online_teaching(tmp_path, parquet_dir, features):
    from fm2edge.data import load_data

    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    losses = {"kd": 1.0, "feature": 1.0} if features else {"kd": 1.0}
    task = DistillTask(create_model(ModelConfig(name="student:small_cnn"), 4), teacher_model(),
                       DistillConfig(teacher="t", losses=losses, views=3))
    views = draw_stored_views(len(train), 3, EVERY, 0, train.image_size[0])
    build_teacher_cache(task, train.images, views, tmp_path / "cache", 16, torch.device("cpu"))
    cache = load_teacher_cache(tmp_path / "cache", len(train), features, torch.device("cpu"))
    assert torch.equal(cache["views"], views)
    source = StoredViews(views)
    for epoch in (0, 1, 2, 4):  # epoch 4 shows view 1 again
        idx = torch.tensor([0, 5, 17, 33, len(train) - 1])
        v = source(idx, epoch)
        assert (v.col("slot") == epoch % 3).all()
        partners = train.images[v.col("partner").long().clamp_min(0)]
        task.cache = cache
        stored, stored_feats = task.cached_outputs(idx, v, torch.device("cpu"))
        replayed = task(train.images[idx], train.labels[idx], idx, v, partners, train.labels[idx])
        task.cache = None
        online, online_feats = task.teacher_outputs(train.images[idx], v, partners)
        live = task(train.images[idx], train.labels[idx], idx, v, partners, train.labels[idx])
        assert torch.allclose(stored, online, atol=1e-5)
        assert features == (stored_feats is not None)
        if features:
            assert torch.allclose(stored_feats, online_feats, atol=1e-5)
        for key in live:
            if key.startswith("loss"):
                assert torch.allclose(replayed[key], live[key], atol=1e-5), key


@pytest.mark.skipif(not bf16_supported_on_cpu(), reason="this CPU has no native bf16")
def test_a_bf16_teacher_stays_close_to_fp32_and_its_cache_replays_it(tmp_path, parquet_dir):
    from fm2edge.data import load_data

    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    teacher = teacher_model()
    student = create_model(ModelConfig(name="student:small_cnn"), 4)
    fp32 = DistillTask(student, teacher, DistillConfig(teacher="t", views=2))
    bf16 = DistillTask(student, teacher, DistillConfig(teacher="t", views=2, teacher_precision="bf16"),
                       channels_last=True)
    assert fp32.teacher_dtype(torch.device("cpu")) is None
    assert bf16.teacher_dtype(torch.device("cpu")) == torch.bfloat16
    views = draw_stored_views(len(train), 2, EVERY, 0, train.image_size[0])
    idx = torch.arange(12)
    v = StoredViews(views)(idx, 1)
    partners = train.images[v.col("partner").long().clamp_min(0)]
    exact, _ = fp32.teacher_outputs(train.images[idx], v, partners)
    fast, _ = bf16.teacher_outputs(train.images[idx], v, partners)
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact), "bf16 arithmetic, fp32 outputs"
    assert torch.allclose(F.softmax(fast, 1), F.softmax(exact, 1), atol=0.02)
    build_teacher_cache(bf16, train.images, views, tmp_path / "cache", 16, torch.device("cpu"))
    bf16.cache = load_teacher_cache(tmp_path / "cache", len(train), False, torch.device("cpu"))
    stored, _ = bf16.cached_outputs(idx, v, torch.device("cpu"))
    assert torch.allclose(stored, fast, atol=1e-5), "the cache holds what the bf16 teacher gives online"


def distill(tmp_path, teacher, name, augment=EVERY, **kw):
    train = kw.pop("train", {})
    return distill_job(DistillJob(
        data=DataConfig(source=str(kw.pop("source"))), model=ModelConfig(name="student:small_cnn"),
        train=TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu", augment=augment, **train),
        distill=DistillConfig(teacher=str(teacher), **kw), run=RunConfig(root=str(tmp_path), name=name)))


def test_stored_views_train_like_online_teaching_on_the_same_views(tmp_path, parquet_dir, clean_teacher):
    cached = distill(tmp_path, clean_teacher, "cached", source=parquet_dir, views=2)
    online = distill(tmp_path, clean_teacher, "online", source=parquet_dir, views=2, cache_teacher="never")
    assert cached["teacher_cached"] and not online["teacher_cached"]
    assert cached["stored_views"] == online["stored_views"] == 2
    for a, b in zip(cached["history"], online["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert cached["test_acc"] == pytest.approx(online["test_acc"], abs=1e-6)


def test_the_teacher_cache_is_keyed_by_teacher_data_and_views(tmp_path, parquet_dir, clean_teacher):
    first = distill(tmp_path, clean_teacher, "a", source=parquet_dir, views=2)
    folder = Path(first["teacher_cache"])
    assert (folder / "views.npy").exists() and np.load(folder / "logits.npy").shape[1] == 2
    other_seed = distill(tmp_path, clean_teacher, "b", source=parquet_dir, views=2, train={"seed": 7})
    assert other_seed["teacher_cache"] == first["teacher_cache"], "students of other seeds share the views"
    jitter = distill(tmp_path, clean_teacher, "c", source=parquet_dir, views=2, augment=replace(EVERY, jitter=0.1))
    assert jitter["teacher_cache"] != first["teacher_cache"], "other augmentation, recomputed"
    assert (Path(jitter["teacher_cache"]) / "meta.json").exists()

    from fm2edge.data import load_data
    from fm2edge.models.io import load_classifier

    job = DistillJob(data=DataConfig(source=str(parquet_dir)), train=TrainConfig(augment=EVERY),
                     distill=DistillConfig(teacher=str(clean_teacher), views=2))
    train, _, _ = load_data(job.data)
    teacher = load_classifier(clean_teacher)
    key = {"augment": "every", "views": 2, "seed": 0}
    base = teacher_cache_dir(job, teacher, train, False, key)
    assert teacher_cache_dir(job, teacher, train, False, dict(key)) == base
    changed = [teacher_cache_dir(job, teacher, train, False, {**key, "views": 3}),
               teacher_cache_dir(job, teacher, train, False, {**key, "seed": 1}),
               teacher_cache_dir(job, teacher, train, False, {**key, "augment": "other"}),
               teacher_cache_dir(job, teacher, train.subset(np.arange(40)), False, key),
               teacher_cache_dir(job, teacher, train, True, key),
               teacher_cache_dir(job, teacher, train, False, key, torch.bfloat16)]
    flipped = load_classifier(clean_teacher)
    flipped.flip_average = True
    changed.append(teacher_cache_dir(job, flipped, train, False, key))
    retrained = tmp_path / "teacher2"
    train_job(TrainJob(data=job.data, model=ModelConfig(name="student:small_cnn"),
                       train=TrainConfig(epochs=1, batch_size=16, device="cpu", seed=3),
                       run=RunConfig(root=str(tmp_path), name="teacher2")))
    changed.append(teacher_cache_dir(replace(job, distill=replace(job.distill, teacher=str(retrained))),
                                     load_classifier(retrained), train, False, key))
    assert len({base, *changed}) == len(changed) + 1, "each change gets its own cache entry"


def test_a_killed_cache_build_resumes_to_the_same_outputs(tmp_path, parquet_dir, monkeypatch):
    import fm2edge.distill.teacher as teacher_module
    from fm2edge.data import load_data

    monkeypatch.setattr(teacher_module, "CHUNK", 16)
    train, _, _ = load_data(DataConfig(source=str(parquet_dir)))
    task = DistillTask(create_model(ModelConfig(name="student:small_cnn"), 4), teacher_model(),
                       DistillConfig(teacher="t", views=2))
    views = draw_stored_views(len(train), 2, EVERY, 0, 32)
    build_teacher_cache(task, train.images, views, tmp_path / "straight", 16, torch.device("cpu"))
    calls = {"n": 0}
    real = task.teacher_outputs

    def dies_after_five_batches(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(task, "teacher_outputs", dies_after_five_batches)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(task, train.images, views, tmp_path / "killed", 16, torch.device("cpu"))
    assert not (tmp_path / "killed").exists(), "no cache entry until every chunk is in"
    assert len(list((tmp_path / ".killed.partial").glob("*.npz"))) == 2, "finished chunks are kept"
    calls["n"] = -100
    build_teacher_cache(task, train.images, views, tmp_path / "killed", 16, torch.device("cpu"))
    assert len(train) == 57  # four chunks of 16 images, two views each, one batch per view
    assert calls["n"] == -100 + 2 * 2, "only the two missing chunks are computed"
    assert np.array_equal(np.load(tmp_path / "killed" / "logits.npy"), np.load(tmp_path / "straight" / "logits.npy"))
    assert not (tmp_path / ".killed.partial").exists()


def test_training_with_every_augmentation_resumes_bit_for_bit(tmp_path, parquet_dir):
    from safetensors.torch import load_file

    def run(name, epochs, resume=False):
        return train_job(TrainJob(data=DataConfig(source=str(parquet_dir)), model=ModelConfig(name="student:small_cnn"),
                                  train=TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, device="cpu", augment=EVERY,
                                                    select="last", schedule="constant"),
                                  run=RunConfig(root=str(tmp_path), name=name, resume=resume)))

    straight = run("straight", 3)
    run("split", 2)
    resumed = run("split", 3, resume=True)
    assert resumed["resumed_from_epoch"] == 2
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the same weights, bit for bit"


def test_loss_parts_are_logged_every_epoch_and_plotted(tmp_path, parquet_dir, clean_teacher):
    from fm2edge.report.plots import learning_curves

    m = distill(tmp_path, clean_teacher, "parts", source=parquet_dir, views=2,
                losses={"kd": 1.0, "dkd": 0.5, "dist": 0.5, "feature": 0.1}, dkd_warmup=1.0, dist_tau=2.0)
    for row in m["history"]:
        assert {"loss_kd", "loss_dkd", "loss_dist", "loss_feature"} <= set(row)
        weighted = row["loss_kd"] + 0.5 * row["loss_dkd"] + 0.5 * row["loss_dist"] + 0.1 * row["loss_feature"]
        assert row["train_loss"] == pytest.approx(weighted, rel=1e-4)
    saved = json.loads((tmp_path / "parts" / "metrics.json").read_text())
    assert saved["history"][0]["loss_dkd"] == m["history"][0]["loss_dkd"]
    fig = learning_curves(m["history"], "parts", 1)
    labels = {line.get_label() for line in fig.axes[0].get_lines()}
    assert {"kd", "dkd", "dist", "feature"} <= labels


def test_a_student_follows_the_data_unless_told(tmp_path):
    from fm2edge.results import start_stage, student_size

    assert [student_size(s) for s in (8, 32, 96, 256)] == [32, 32, 96, 128]
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i, size in enumerate([(300, 200), (180, 240)] * 3):
            Image.new("RGB", size, (40 * i, 90 if c == "a" else 0, 0)).save(tmp_path / c / f"{i}.png")
    session = start_stage(DataConfig(source=str(tmp_path), val_fraction=0, test_fraction=0.34), "cpu")
    assert session.train.image_size == (200, 200)
    assert session.model(ModelConfig(name="student:small_cnn"), 0).preprocess.size == 128, "photos: not 32 px"
    assert session.model(ModelConfig(name="student:small_cnn", image_size=64), 0).preprocess.size == 64
    timm = session.model(ModelConfig(name="timm:mobilenetv3_small_100", image_size=96), 0)
    assert timm.preprocess.size == 96 and timm(torch.zeros(2, 3, 96, 96)).shape == (2, session.train.num_classes)


@pytest.mark.parametrize("size", [32, 61, 224])
@pytest.mark.parametrize("auto", ["trivial", "rand"])
def test_batched_operations_equal_the_per_image_torchvision_path(size, auto):
    """Every TrivialAugment / RandAugment operation, run once over all the images that drew it, gives the same
    pixels as transforms.v2.functional called image by image with the same draws (odd sizes included)."""
    from fm2edge.augment import OPS, operations, operations_per_image

    cfg = AugmentConfig(auto=auto, magnitude=13)
    images = torch.randint(0, 256, (300, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    views = draw_views(300, cfg, torch.Generator().manual_seed(6), 300, size)
    drawn = set(views.col("op1").long().tolist()) | set(views.col("op2").long().tolist())
    assert drawn >= set(range(len(OPS))), "every operation drawn at least once"
    batched, reference = operations(images, views), operations_per_image(images, views)
    assert torch.equal(batched, reference)
    assert not torch.equal(batched, images)


def test_batched_rotations_take_torchvision_s_exact_quarter_turns():
    from fm2edge.augment import OPS, apply_op, apply_op_batched

    rotate = [name for name, _, _ in OPS].index("rotate")
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([90.0, -90.0, 30.0, 0.0], dtype=torch.float64)
    out = apply_op_batched(images, rotate, angles)
    for img, angle, got in zip(images, angles, out, strict=True):
        assert torch.equal(got, apply_op(img, rotate, float(angle) / OPS[rotate][1]))
    assert torch.equal(out[0], torch.rot90(images[0], 1, dims=(-2, -1)))  # counter-clockwise, as v2 turns


def boxed_views(boxes, stored, flips=None):
    """Views whose crops are the given (top, left, height, width) boxes in stored pixels."""
    p = draw_views(len(boxes), AugmentConfig(), torch.Generator().manual_seed(0), len(boxes), stored).params.clone()
    p[:, [COL["top"], COL["left"], COL["height"], COL["width"]]] = torch.tensor(boxes, dtype=torch.float64) / stored
    if flips is not None:
        p[:, COL["flip"]] = torch.tensor(flips, dtype=torch.float64)
    return Views(p)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize(("stored", "size"), [(256, 96), (61, 32), (32, 96), (100, 100), (8, 224)])
def test_the_batched_resample_is_torch_s_antialiased_resize(stored, size, mode):
    """The batch's own resample (the GPU path) of whole images equals interpolate(antialias=True) with the same
    kernel to float precision, shrinking and growing (a bicubic's overshoot clamped to the pixel range, as a
    model's preprocessing clamps it)."""
    from fm2edge.augment import resample

    x = images(3, stored)
    out = resample(x, boxed_views([(0, 0, stored, stored)] * 3, stored), size, interpolation=mode)
    reference = F.interpolate(x.float(), size=(size, size), mode=mode, antialias=True, align_corners=False)
    assert out.shape == (3, 3, size, size) and out.dtype == torch.float32
    assert torch.allclose(out, reference.clamp(0, 255), atol=1e-2)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_a_model_sees_whole_image_views_as_its_preprocessing_resizes(mode):
    """A view of the whole image, rendered for a model, is the image its own preprocessing gives (its interpolation
    kernel, not always bilinear): a teacher shown views resized otherwise than it was trained on sees other
    images (upscaled 8 x 8 digits: 24% agreement with the labels instead of 100%)."""
    from fm2edge.augment import model_views
    from fm2edge.models.preprocess import Preprocess

    x = images(3, 8)
    pre = Preprocess(size=64, crop_pct=1.0, interpolation=mode)
    whole = boxed_views([(0, 0, 8, 8)] * 3, 8, flips=[0, 0, 0])
    level = 1 / 255 / max(pre.std)  # one pixel level, normalised

    def mean_levels(shown):
        return float((shown - pre(x)).abs().mean() / level)

    # within rounding on average (torch's uint8 bicubic rounds between its passes: a few levels at sharp edges)
    assert mean_levels(model_views(pre, x, whole)) < 1
    other = Preprocess(size=64, crop_pct=1.0, interpolation="bicubic" if mode == "bilinear" else "bilinear")
    assert mean_levels(model_views(other, x, whole)) > 5, "the kernel matters (about 10 levels on average here)"


def test_the_cpu_crop_and_the_batched_resample_give_the_same_views():
    """On a CPU each box goes through torch's uint8 resize image by image; the batched resample (the GPU path)
    gives the same pixels for the same boxes and flips, to within one level of rounding, at shrinking and growing
    sizes."""
    from fm2edge.augment import crop_resize, pixel_boxes, resample

    x = images(4, 96)
    boxes = [(0, 0, 96, 96), (10, 20, 60, 50), (30, 5, 66, 80), (0, 40, 37, 56)]
    views = boxed_views(boxes, 96, flips=[0, 1, 0, 1])
    snapped = pixel_boxes(views.params, 96, 96)
    assert snapped.long().tolist() == [list(b) for b in boxes]
    for size in (64, 128):
        per_image, batched = crop_resize(x, views, size), resample(x, views, size, snapped)
        assert per_image.dtype == torch.uint8 and batched.dtype == torch.float32
        assert (per_image.float() - batched.round()).abs().max() <= 1
        # bicubic: torch's uint8 kernel rounds and clamps between its two passes (as PIL does), so overshooting
        # edges differ by more than a level; the views agree on average
        per_image, batched = crop_resize(x, views, size, "bicubic"), resample(x, views, size, snapped, "bicubic")
        assert (per_image.float() - batched).abs().mean() <= 1
    unflipped = crop_resize(x, boxed_views(boxes, 96, flips=[0, 0, 0, 0]), 64)
    assert torch.equal(crop_resize(x, views, 64)[1], unflipped[1].flip(-1))


def test_colour_jitter_is_brightness_then_contrast_then_saturation():
    """The one colour matrix per image is the three adjustments in turn (unclamped): brightness scales, contrast
    pulls towards the mean luma, saturation towards each pixel's luma."""
    from fm2edge.augment import colour

    x = images(5, 16).float()
    views = draw_views(5, AugmentConfig(jitter=0.4), torch.Generator().manual_seed(3), 5, 16)
    b, c, s = (views.col(k).float().view(-1, 1, 1, 1) for k in ("brightness", "contrast", "saturation"))

    def luma(y):
        return 0.2989 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]

    y = x * b
    mean = luma(y).mean((1, 2, 3), keepdim=True)
    y = c * (y - mean) + mean
    y = s * (y - luma(y)) + luma(y)
    assert torch.allclose(colour(x, views), y, atol=1e-3)
    plain = draw_views(5, AugmentConfig(), torch.Generator().manual_seed(3), 5, 16)
    assert colour(x, plain) is x, "no jitter drawn: the images as they are"
