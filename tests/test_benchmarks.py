"""Benchmark scripts rehearsed on the CPU at toy size: the GPU suite's profiler pass (what it counts and what it
leaves behind) and the augmentation benchmark's table."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def gpu_suite(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_suite

    return gpu_suite


def test_device_busy_time_is_the_union_of_kernel_intervals(gpu_suite):
    assert gpu_suite.busy_microseconds([]) == 0
    assert gpu_suite.busy_microseconds([(0, 10), (5, 15), (20, 25)]) == 20  # overlap counted once, gap not at all
    assert gpu_suite.busy_microseconds([(20, 25), (0, 30)]) == 30  # one kernel inside another's span


def test_a_profiled_part_leaves_a_trace_and_a_table_that_count_its_steps(gpu_suite, tmp_path):
    def part():
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            torch.nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.zeros(8, dtype=torch.long)).backward()
            opt.step()
            opt.zero_grad()
        return {"figures": {"steps": 3}, "notes": "toy"}

    result, summary = gpu_suite.profiled(part, tmp_path / "profile", "toy")
    assert result["figures"] == {"steps": 3}
    assert summary["optimizer_steps"] == 3 and summary["span_ms"] > 0 and summary["host_op_ms"] > 0
    ops = [t["op"] for t in summary["top"]]
    assert 0 < len(ops) <= gpu_suite.TOP and "aten::addmm" in ops
    assert summary["device_idle_share"] is None if not torch.cuda.is_available() else 0 <= summary[
        "device_idle_share"] <= 1
    table = (tmp_path / "profile" / "toy.md").read_text()
    assert "3 optimiser steps" in table and "`aten::addmm`" in table
    trace = json.loads(gzip.open(tmp_path / "profile" / "toy.trace.json.gz").read())
    assert any(e.get("name") == "aten::addmm" for e in trace["traceEvents"])
    assert not (tmp_path / "profile" / "toy.trace.json").exists()  # only the compressed trace stays


def test_the_augmentation_benchmark_times_both_pipelines_and_the_crop(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import augment_speed

    out = tmp_path / "augment.json"
    monkeypatch.setattr("sys.argv", ["augment_speed.py", "--batch", "6", "--sizes", "48", "32", "--repeats", "1",
                                     "--json", str(out)])
    augment_speed.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["stored"]) for r in rows] == [(48, 256), (32, 32)]
    for r in rows:
        assert min(r["batched_img_s"], r["per_image_img_s"], r["crop_img_s"], r["resample_img_s"]) > 0
        assert r["ratio"] == pytest.approx(r["batched_img_s"] / r["per_image_img_s"])
    assert "per-image img/s" in capsys.readouterr().out


def test_the_decode_benchmark_times_both_decodes_of_the_same_photos(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import decode_speed

    out = tmp_path / "decode.json"
    monkeypatch.setattr("sys.argv", ["decode_speed.py", "--count", "2", "--width", "1200", "--height", "900",
                                     "--size", "128", "--json", str(out)])
    decode_speed.main()
    (row,) = json.loads(out.read_text())["rows"]
    assert row["reduced_img_s"] > 0 and row["full_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["reduced_img_s"] / row["full_img_s"])
    assert row["mean_abs_diff"] < 2  # the same photos, decoded to nearly the same pixels
    assert "full decode" in capsys.readouterr().out


def test_the_group_benchmark_trains_each_model_on_both_splits_of_one_burst_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import group_leak

    monkeypatch.setattr(group_leak, "SHARED_PHOTOS", tmp_path / "absent.parquet")  # digits, wherever it runs
    out = tmp_path / "groups.json"
    monkeypatch.setattr("sys.argv", ["group_leak.py", "--photos", "24", "--burst", "3", "--models",
                                     "student:small_cnn@32@1", "--json", str(out)])
    group_leak.main()
    folder, by_image, by_burst = json.loads(out.read_text())["rows"]
    assert folder["images"] == 72 and folder["near_copies"]["test_images"] == by_image["test_images"]
    assert (by_image["held_out_by"], by_burst["held_out_by"]) == ("image", "burst")
    assert by_burst["test_images"] % 3 == 0  # whole bursts of three shots
    assert "held out image by image" in capsys.readouterr().out


def test_the_interpolation_benchmark_scores_each_kind_of_view_with_both_kernels(monkeypatch, tmp_path, capsys,
                                                                               digits_run):
    """A bilinear teacher (the small CNN) sees the same pixels in both columns; its preprocessing row is its
    accuracy on the training images it was trained on, as the classifier gives it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import view_interpolation

    from fm2edge.config import DataConfig
    from fm2edge.data import load_data
    from fm2edge.models.io import load_classifier

    out = tmp_path / "views.json"
    monkeypatch.setattr("sys.argv", ["view_interpolation.py", str(digits_run), "--data.source", "digits",
                                     "--data.max_train", "400", "--images", "48", "--json", str(out)])
    view_interpolation.main()
    plain, whole, cropped = json.loads(out.read_text())["rows"]
    assert (plain["views"], whole["views"], cropped["views"]) == (
        "preprocessing (as trained)", "whole image", "resized crop + flip")
    assert whole["bilinear"] == whole["own"] and cropped["bilinear"] == cropped["own"]
    train = load_data(DataConfig(source="digits", max_train=400))[0]
    model = load_classifier(digits_run).eval()
    with torch.no_grad():
        expected = (model(model.preprocess(train.images[:48])).argmax(1) == train.labels[:48]).float().mean()
    assert plain["own"] == pytest.approx(float(expected)) and plain["images"] == 48
    assert "share naming the label" in capsys.readouterr().out


def test_the_near_copy_benchmark_counts_the_copy_it_was_given(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import near_copies

    rng = np.random.default_rng(0)
    for rel, n in {"train/a": 6, "train/b": 6, "test/a": 2, "test/b": 2}.items():
        (tmp_path / "p" / rel).mkdir(parents=True)
        for i in range(n):
            small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            small.resize((48, 48), Image.BICUBIC).save(tmp_path / "p" / rel / f"{i}.png")
    Image.open(tmp_path / "p" / "train" / "b" / "1.png").save(tmp_path / "p" / "test" / "b" / "copy.jpg", quality=75)
    out = tmp_path / "near.json"
    monkeypatch.setattr("sys.argv", ["near_copies.py", "--data", str(tmp_path / "p"), "--count", "8",
                                     "--pairs", str(tmp_path / "pairs.png"), "--json", str(out)])
    near_copies.main()
    rows = json.loads(out.read_text())["rows"]
    test = next(r for r in rows if r.get("split") == "test")
    assert test["images"] == 5 and test["within"]["4"] == 1 and test["confirmed"] == 1
    assert test["nearest_similarity"]["max"] >= 0.9  # the copy
    copies = rows[-1]["copies"]
    assert copies["photos"] == 8 and sum(copies["copy_bits"]) <= 8 and copies["others_compared"] == 4
    assert copies["copies_confirmed"] <= copies["copies_within_threshold"]
    assert Image.open(tmp_path / "pairs.png").size[0] > 0
    assert "within the threshold" in capsys.readouterr().out


def test_the_fixed_padding_benchmark_times_both_graphs_of_each_size(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import fixed_padding

    out = tmp_path / "padding.json"
    monkeypatch.setattr("sys.argv", ["fixed_padding.py", "--sizes", "64", "--runs", "5", "--json", str(out)])
    fixed_padding.main()
    (row,) = json.loads(out.read_text())["latency"]
    assert row["size"] == 64
    assert all(row[f"{p}_{f}_ms"] > 0 for p in ("fp32", "int8") for f in ("computed", "fixed"))
    assert "| 64 |" in capsys.readouterr().out


def test_the_quantisation_benchmark_times_both_ways_of_each_layout_and_compares_the_graphs(monkeypatch, tmp_path,
                                                                                           capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import int8_quantize_speed

    out = tmp_path / "quantise.json"
    monkeypatch.setattr("sys.argv", ["int8_quantize_speed.py", "--models", "student:small_cnn@32", "--repeats", "1",
                                     "--json", str(out)])
    int8_quantize_speed.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["layout"] for r in rows] == ["none", "first_last"]
    assert all(r["identical"] and r["onnxruntime_s"] > 0 and r["vectorised_s"] > 0 for r in rows)
    assert "| student:small_cnn@32 | fully int8 |" in capsys.readouterr().out


def test_the_teacher_speed_benchmark_times_each_way_a_teacher_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import teacher_speed

    out = tmp_path / "teachers.json"
    monkeypatch.setattr("sys.argv", ["teacher_speed.py", "--teachers", "student:small_cnn", "--batch", "4",
                                     "--size", "32", "--json", str(out)])
    teacher_speed.main()
    (row,) = json.loads(out.read_text())["rows"]
    assert all(row[k] > 0 for k in ("torch", "channels_last", "onnxruntime"))
    assert row["max_logit_difference"] < 1e-4 and row["auto"] == "onnxruntime"
    assert "| student:small_cnn |" in capsys.readouterr().out


def test_the_inference_batch_benchmark_runs_each_batch_and_fm2edges_own(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import inference_batch

    out = tmp_path / "batches.json"
    monkeypatch.setattr("sys.argv", ["inference_batch.py", "--model", "student:small_cnn", "--sizes", "512",
                                     "--batches", "4", "16", "--images", "16", "--json", str(out)])
    inference_batch.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["size"], r["batch"], r["fm2edge"]) for r in rows] == [(512, 4, False), (512, 8, True), (512, 16, False)]
    assert all(r["img_s"] > 0 and r["peak_gib"] > 0 for r in rows)
    assert "fm2edge's batch when asked for 16" in capsys.readouterr().out


@pytest.mark.slow
def test_the_memory_benchmark_runs_onnxruntimes_defaults_beside_fm2edges_own(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import memory_peaks

    out = tmp_path / "memory.json"
    monkeypatch.setattr("sys.argv", ["memory_peaks.py", "--model", "student:small_cnn", "--size", "48", "--images",
                                     "64", "--json", str(out)])
    memory_peaks.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["part"], r["how"]) for r in rows] == [
        ("minmax calibration", "onnxruntime"), ("minmax calibration", "fm2edge"),
        ("percentile calibration", "onnxruntime"), ("percentile calibration", "fm2edge"),
        ("training steps", "64"), ("training steps", "fm2edge")]
    assert all(r["peak_gib"] > 0 for r in rows) and rows[-1]["batch"] == 128 and rows[-1]["img_s"] > 0
    assert "training steps: peak memory" in capsys.readouterr().out


def test_the_teacher_size_benchmark_fine_tunes_each_size_once_and_prints_its_row(monkeypatch, tmp_path, capsys,
                                                                                 parquet_dir, tiny_hf_resnet):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import teacher_sizes

    argv = ["teacher_sizes.py", "--source", str(parquet_dir), "--model", f"hf:{tiny_hf_resnet}", "--runs", "16:1",
            "24:2", "--device", "cpu", "--root", str(tmp_path / "runs")]
    monkeypatch.setattr("sys.argv", argv)
    teacher_sizes.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 16 |") or line.startswith("| 24 |")]
    assert [r.split(" | ")[:2] for r in rows] == [["| 16", "1"], ["| 24", "2"]]
    for size, epochs in ((16, 1), (24, 2)):
        metrics = json.loads((tmp_path / "runs" / f"{size}px-{epochs}ep" / "full" / "metrics.json").read_text())
        assert len(metrics["history"]) == epochs and metrics["test_acc"] is None  # the test split stays unread
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/full/metrics.json")}
    teacher_sizes.main()  # finished runs are reused, not trained again
    assert capsys.readouterr().out.count("| 24 | 2 |") == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/full/metrics.json")} == written


def qres(files: dict[str, bytes], compressed: set[str]) -> bytes:
    """A Qt resource bundle (version 2) holding ``files`` under one folder, laid out as Qt's rcc writes it."""
    import zlib

    names, data, tree = b"", b"", []

    def add_name(text: str) -> int:
        nonlocal names
        off = len(names)
        names += len(text).to_bytes(2, "big") + b"\0\0\0\0" + text.encode("utf-16-be")
        return off

    def node(name_off: int, flags: int, a: bytes, b: bytes) -> bytes:
        return name_off.to_bytes(4, "big") + flags.to_bytes(2, "big") + a + b + b"\0" * 8

    tree.append(node(0, 2, (1).to_bytes(4, "big"), (1).to_bytes(4, "big")))  # the root: one child at node 1
    tree.append(node(add_name("images"), 2, len(files).to_bytes(4, "big"), (2).to_bytes(4, "big")))
    for name, payload in files.items():
        stored = len(payload).to_bytes(4, "big") + zlib.compress(payload) if name in compressed else payload
        tree.append(node(add_name(name), 1 if name in compressed else 0, b"\0\0\0\0",
                         len(data).to_bytes(4, "big")))
        data += len(stored).to_bytes(4, "big") + stored
    header_len = 20
    tree_b = b"".join(tree)
    return (b"qres" + (2).to_bytes(4, "big") + header_len.to_bytes(4, "big")
            + (header_len + len(tree_b)).to_bytes(4, "big") + (header_len + len(tree_b) + len(data)).to_bytes(4, "big")
            + tree_b + data + names)


def test_the_photo_folder_builder_reads_qt_bundles_and_keeps_the_first_images_of_each_class(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import photo_folders

    bundle = tmp_path / "b.rcc"
    bundle.write_bytes(qres({"a.webp": b"plain bytes", "b.webp": b"squeezed " * 20}, compressed={"b.webp"}))
    assert photo_folders.qt_resources(bundle) == {"/images/a.webp": b"plain bytes", "/images/b.webp": b"squeezed " * 20}
    (tmp_path / "bad.rcc").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        photo_folders.qt_resources(tmp_path / "bad.rcc")

    labels = [2, 0, 2, 1, 0, 0, 2, 1]
    assert photo_folders.first_per_class(np.array(labels), 2).tolist() == [0, 1, 2, 3, 4, 7]
    assert photo_folders.first_per_class(np.array(labels), 1, start=1).tolist() == [2, 4, 7]  # a second sample

    root = tmp_path / "pkg" / photo_folders.FASHION
    root.mkdir(parents=True)
    images = np.arange(8 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(8, 28, 28)
    for stem in ("train", "t10k"):
        with gzip.open(root / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\0\0\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (8, 28, 28)) + images.tobytes())
        with gzip.open(root / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\0\0\x08\x01" + (8).to_bytes(4, "big") + bytes(labels))
    counts = photo_folders.fashion(tmp_path / "pkg", tmp_path / "out", 1, 2, unlabeled=5)
    assert counts == {"train": 3, "test": 6, "unlabeled": 5}
    train = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out" / "fashion10" / "train").rglob("*.png"))
    assert [p.parent.name for p in train] == ["pullover", "t-shirt", "trouser"]
    first = next((tmp_path / "out" / "fashion10" / "train" / "pullover").iterdir())
    assert np.array_equal(np.asarray(Image.open(first)), images[0])  # the pixels as stored, nothing resampled
    unlabeled = sorted(p.name for p in (tmp_path / "out" / "fashion-unlabeled").iterdir())
    assert unlabeled == ["train-00002.png", "train-00004.png", "train-00005.png", "train-00006.png",
                         "train-00007.png"]  # the training images not kept with labels


def test_the_photo_folder_builder_takes_the_first_cats_and_dogs_of_a_parquet_split(monkeypatch, tmp_path):
    """``--catsdogs``: from a parquet split in the hub's image schema, the first photos of each class in file
    order, their encoded bytes as stored, in ``imbal/{train,test}/<class>/`` and one ``photos16/<class>/``."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import photo_folders

    labels = {"train": [0, 1, 0, 0, 1], "test": [1, 0, 0]}
    stored = {}
    for split, ys in labels.items():
        rows = []
        for i, y in enumerate(ys):
            path = tmp_path / f"{split}-{i}.jpg"
            Image.fromarray(np.full((8, 8, 3), 30 * i + 100 * y, np.uint8)).save(path)
            rows.append(path.read_bytes())
        stored[split] = rows
        Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in rows], "label": ys},
                          features=Features({"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog"])})
                          ).to_parquet(str(tmp_path / f"{split}.parquet"))
    counts = photo_folders.catsdogs(tmp_path, tmp_path / "out")
    assert counts == {"imbal/train": 5, "imbal/test": 3, "photos16": 5}  # fewer than asked for: all there are
    cats = sorted((tmp_path / "out" / "imbal" / "train" / "cat").iterdir())
    assert [p.read_bytes() for p in cats] == [stored["train"][i] for i in (0, 2, 3)]  # file order, bytes as stored
    assert len(list((tmp_path / "out" / "photos16" / "dog").iterdir())) == 2
    assert len(list((tmp_path / "out" / "imbal" / "test" / "dog").iterdir())) == 1


def test_the_photo_folder_builder_splits_each_stamp_category_alternately(monkeypatch, tmp_path):
    """Tux Paint's stamps: each category's PNGs by path, sub-folders included, every other one to test, the files
    as shipped (transparency kept) and named by their sub-folder so that two stamps of one name stay two."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import photo_folders

    stamps = tmp_path / "pkg" / photo_folders.STAMPS
    for cls in photo_folders.STAMP_CATEGORIES:
        for name in ("a/x.png", "b/x.png", "c.png", "c.svg"):
            (stamps / cls / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGBA", (4, 6), (255, 0, 0, 0)).save(stamps / cls / name, format="PNG")
    counts = photo_folders.tuxpaint_stamps(tmp_path / "pkg", tmp_path / "out")
    k = len(photo_folders.STAMP_CATEGORIES)
    assert counts == {"train": 2 * k, "test": k}  # a-x and c to train, b-x to test: the .svg left out
    assert sorted(p.name for p in (tmp_path / "out" / "train" / "food").iterdir()) == ["a-x.png", "c.png"]
    assert Image.open(tmp_path / "out" / "test" / "food" / "b-x.png").mode == "RGBA"


def test_the_many_class_stamp_folder_keeps_sub_categories_with_enough_stamps(monkeypatch, tmp_path):
    """tuxpaint-fine: each sub-category with the fewest stamps asked for or more is one class of a flat folder named
    ``<category>-<sub-category>``, deeper folders included and named into the file; smaller ones are left out."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import photo_folders

    stamps = tmp_path / "pkg" / photo_folders.STAMPS
    layout = {"animals/birds": ["a.png", "b.png", "deep/a.png"], "food/nuts": ["n.png", "n.svg"]}
    for sub, names in layout.items():
        for name in names:
            (stamps / sub / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGBA", (4, 6), (0, 0, 255, 0)).save(stamps / sub / name, format="PNG")
    assert photo_folders.tuxpaint_fine(tmp_path / "pkg", tmp_path / "out", min_images=2) == {"animals-birds": 3}
    assert sorted(p.name for p in (tmp_path / "out" / "animals-birds").iterdir()) == ["a.png", "b.png", "deep-a.png"]
    assert not (tmp_path / "out" / "food-nuts").exists()


def test_the_letterbox_keeps_a_wide_photo_whole_on_grey_where_the_crop_keeps_its_middle(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import fit_probe

    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)  # red left third, black elsewhere
    Image.fromarray(arr).save(tmp_path / "wide.png")
    boxed = fit_probe.square(str(tmp_path / "wide.png"), 15, "pad")
    assert boxed.shape == (15, 15, 3)
    assert (boxed[:5] == fit_probe.PAD_GREY).all() and (boxed[-5:] == fit_probe.PAD_GREY).all()  # 5 rows each side
    assert boxed[7, 1, 0] > 200 and boxed[7, 13].max() < 30  # the red end kept, the black end too
    cropped = fit_probe.square(str(tmp_path / "wide.png"), 15, "crop")
    assert cropped.shape == (15, 15, 3) and cropped[:, 0, 0].max() < 60  # red cut away, a fringe left
    assert fit_probe.probe_scores(np.eye(10).repeat(5, 0), np.arange(10).repeat(5), [1.0])[0] == 1.0


def hub_parquet(path: Path, column: str, names: list[str], labels: list[int], side: int = 16) -> None:
    """A parquet split in the hub's image schema: one coloured PNG per label."""
    import io

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HubImage

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((side, side, 3), (37 * i) % 256, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    features = Features({column: HubImage(), "label": ClassLabel(names=names)})
    Dataset.from_dict({column: [{"bytes": png(i), "path": None} for i in range(len(labels))], "label": labels},
                      features=features).to_parquet(str(path))


def test_the_messy_folder_is_built_as_people_keep_photos_and_reads_as_three_classes(monkeypatch, tmp_path):
    """`photo_folders.messy`: dated sub-folders, EXIF-turned JPEGs, transparent and grey PNGs, clutter, a truncated
    JPEG and an empty class folder; `fm2edge data` reads it as three classes, skipping and counting the rest."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import photo_folders

    from fm2edge.config import DataConfig
    from fm2edge.data.summary import summarise

    (tmp_path / "cd").mkdir()
    (tmp_path / "cifar").mkdir()
    hub_parquet(tmp_path / "cd" / "train.parquet", "image", ["cat", "dog"], [0, 1] * 6)
    hub_parquet(tmp_path / "cifar" / "train.parquet", "img", ["airplane", "automobile"], [1, 0, 0, 1, 0, 0], 32)
    assert photo_folders.messy(tmp_path / "cd", tmp_path / "cifar", tmp_path) == {"cat": 6, "dog": 6, "airplane": 4}
    root = tmp_path / "messy"
    turned = Image.open(root / "cat" / "2020 trip" / "IMG_0000.JPG")
    assert turned.getexif()[0x0112] == 6 and turned.size == (400, 300)  # stored on its side: 300 x 400 upright
    assert Image.open(root / "dog" / "Hund Foto \u00fc 0.png").mode == "RGBA"
    assert Image.open(root / "dog" / "Hund Foto \u00fc 1.png").mode == "L"
    out = summarise(DataConfig(source=str(root), on_bad_image="skip", test_fraction=0.25,
                               cache_dir=str(tmp_path / "cache")))
    assert out["classes"] == ["airplane", "cat", "dog"] and out["undecodable"] == 1
    assert out["skipped_files"] == {"hidden": 1, "not an image": 2} and out["empty_class_folders"] == [
        str(root / "empty_class")]
    assert out["sub_folders"] == 2


def test_the_warmup_study_distils_each_schedule_and_scores_it_on_the_left_out_images(monkeypatch, tmp_path, capsys,
                                                                                    parquet_dir, tiny_hf_resnet):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import warmup_study

    root = tmp_path / "runs"
    argv = ["warmup_study.py", "--source", str(parquet_dir), "--per_class", "8", "--root", str(root), "--teacher",
            f"hf:{tiny_hf_resnet}", "--student", f"hf:{tiny_hf_resnet}", "--size", "16", "--epochs", "1",
            "--seeds", "0", "--schedules", "onecycle", "onecycle-lr2e-4"]
    monkeypatch.setattr("sys.argv", argv)
    warmup_study.main()
    out = capsys.readouterr().out
    assert "left-out images" in out and "CPU " in out
    for name, lr in (("onecycle", 5e-4), ("onecycle-lr2e-4", 2e-4)):
        assert re.search(rf"^\s+1  {re.escape(name)}\s+\d+\.\d\d%", out, re.M)  # the table's row
        config = yaml.safe_load((root / f"distill-{name}-e1-s0" / "config.yaml").read_text())
        assert config["train"]["lr"] == lr and config["distill"]["teacher"] == str(root / "teacher")
        assert config["train"]["batch_size"] == 64  # auto's batch for a pretrained student at up to 128 px
        assert json.loads((root / f"distill-{name}-e1-s0" / "metrics.json").read_text())["test_acc"] is None


def test_the_warmup_study_fine_tunes_on_labels_alone_with_the_recipes_epochs(monkeypatch, tmp_path, capsys,
                                                                              parquet_dir, tiny_hf_resnet):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import warmup_study

    root = tmp_path / "runs"
    argv = ["warmup_study.py", "--source", str(parquet_dir), "--per_class", "8", "--root", str(root), "--student",
            f"hf:{tiny_hf_resnet}", "--size", "16", "--epochs", "0", "--seeds", "0", "--schedules", "onecycle",
            "--command", "train", "--held_out", "5"]
    monkeypatch.setattr("sys.argv", argv)
    warmup_study.main()
    out = capsys.readouterr().out
    assert "fm2edge train" in out and "; 5 left-out images" in out
    assert re.search(r"^recipe  onecycle\s+\d+\.\d\d%", out, re.M)  # the table row: the recipe's epochs
    assert not (root / "teacher").exists()  # no teacher is probed for training on labels alone
    config = yaml.safe_load((root / "train-onecycle-e0-s0" / "config.yaml").read_text())
    assert config["train"]["epochs"] == 30 and config["train"]["lr"] == 5e-4  # the recipe's epochs, the rate given
    assert "distill" not in config


def test_the_auto_study_row_says_a_run_without_a_latency_budget(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import auto_study

    assert auto_study.latency_text(None) == "no latency bound" and auto_study.latency_text(1.534) == "1.53 ms"


def test_the_holdout_check_scores_every_stage_and_graph_of_a_run_on_images_it_left_out(monkeypatch, tmp_path, capsys,
                                                                                      digits_run):
    from fm2edge.cli import main

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import holdout_check

    assert main(["auto", "--data.source", "digits", "--data.per_class", "30", "--auto.teachers", f"[{digits_run}]",
                 "--auto.students", "[student:small_cnn@16]", "--auto.views", "1", "--auto.minutes", "3",
                 "--auto.latency_ms", "50", "--auto.min_epochs", "1", "--auto.max_epochs", "2", "--auto.device",
                 "cpu", "--run.root", str(tmp_path), "--run.name", "a"]) == 0
    run = tmp_path / "a"
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["holdout_check.py", str(run), "--source", "digits", "--per_class", "30",
                                     "--requantise"])
    holdout_check.main()
    out = capsys.readouterr().out
    # digits' training split less the 30 per class the run read (300, validation carved from them)
    assert re.search(r": (\d+) labelled training-split images the run left out; CPU ", out)
    assert int(re.search(r": (\d+) labelled", out)[1]) == 1347 - 300
    stage = re.search(r"^  (student-small_cnn-16)\s+PyTorch fp32\s+(\d+\.\d\d)%, agreement with the teacher\s+"
                      r"(\d+\.\d\d)%$", out, re.M)
    assert stage and 0 <= float(stage[2]) <= 100 and 0 <= float(stage[3]) <= 100
    graphs = sorted(p.parent.name + "/" + p.name for p in run.glob("export-*/*.onnx"))
    assert graphs and any(g.startswith("export-teacher") for g in graphs)  # the teacher's own graphs are scored too
    for g in graphs:
        assert re.search(rf"^  {re.escape(g)}\s+ONNX\s+\d+\.\d\d%$", out, re.M), g
    assert re.search(r"requantised \(min-max, per-channel\): fp32 \d+\.\d\d%", out)
    assert len(re.findall(r"int8 weights in [78] bits: \d+\.\d\d%, agreement with fp32 \d+\.\d\d%", out)) == 2


def test_the_int8_layout_benchmark_scores_each_recipe_against_fp32_on_three_sets(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import int8_layouts

    from fm2edge.config import DataConfig, ModelConfig, RunConfig, TrainConfig, TrainJob
    from fm2edge.train import train_job

    data = DataConfig(source="digits", max_train=200, max_test=60)
    train_job(TrainJob(data=data, model=ModelConfig(name="student:small_cnn"), run=RunConfig(root=str(tmp_path)),
                       train=TrainConfig(epochs=1, batch_size=32, device="cpu")))
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    out = tmp_path / "layouts.json"
    monkeypatch.setattr("sys.argv", ["int8_layouts.py", str(run), "--data", "digits", "--probe", "digits",
                                     "--latency-runs", "5", "--json", str(out)])
    int8_layouts.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["fp32", "minmax, all int8", "minmax, first and last fp32",
                                           "percentile, all int8", "percentile, first and last fp32"]
    assert all(0 <= r[f"agreement_{k}"] <= 1 for r in rows[1:] for k in ("train", "validation", "probe"))
    assert all(r["p50_ms"] > 0 for r in rows) and "| percentile, first and last fp32 |" in capsys.readouterr().out
