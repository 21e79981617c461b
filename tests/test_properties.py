"""Property-based tests (Hypothesis): generated image-folder layouts, flag values and recipes. Whatever a user hands
in, fm2edge either works with trustworthy splits or stops with one line (exit 2) and no partial run folder; it never
shows a traceback."""

from __future__ import annotations

import io
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from fm2edge.cli import main
from fm2edge.config import DataConfig
from fm2edge.data.dataset import is_grouped, load_planned, plan_splits
from fm2edge.errors import Fm2EdgeError

CLASS_NAMES = st.sampled_from(["ants", "bees", "big cat", "chien é", "猫", "a.b", "x-1", "Wasps"])
MODES = ["RGB", "L", "P", "RGBA", "LA", "I;16", "CMYK", "1"]


@dataclass
class Layout:
    """A generated folder: image counts per (split, class), and the oddities people's folders have."""

    splits: dict[str, dict[str, int]]  # split folder ("" = no split folders) -> class -> images
    modes: list[str]
    sizes: list[tuple[int, int]]
    hidden: bool
    text_file: bool
    nested: bool  # one image a level deeper, in a sub-folder of its class folder
    shoots: bool  # the training images of each class in sub-folders of two or three ("shoot 0", "shoot 1", ...)
    loose: bool  # one image directly in a split folder or the root
    linked_split: bool  # the first split folder is a symbolic link to a folder elsewhere
    linked_file: bool  # one image is a link to another image
    corrupt: bool  # one image cut in half
    empty_class: bool
    test_only_class: bool
    duplicate_in_val: bool  # a test image also filed under validation
    copied: bool  # a training image saved again beside itself under another name


@st.composite
def layouts(draw) -> Layout:
    n_classes = draw(st.sampled_from([1, 2, 2, 2, 3, 3]))
    classes = draw(st.lists(CLASS_NAMES, min_size=n_classes, max_size=n_classes, unique=True))
    split_names = draw(st.sampled_from([[""], ["train"], ["train", "test"], ["train", "val"], ["train", "val", "test"],
                                        ["training", "validation", "testing"], ["train", "dev", "eval"]]))
    training = ("", "train", "training")  # every class has training images; the empty class is an oddity below
    splits = {s: {c: draw(st.integers(1, 6) if s in training else st.integers(0, 3)) for c in classes}
              for s in split_names}
    n_sizes = draw(st.integers(1, 2))
    flag = st.sampled_from([False] * 7 + [True])  # each oddity in an eighth of the folders
    return Layout(splits, modes=draw(st.lists(st.sampled_from(MODES), min_size=1, max_size=3)),
                  sizes=draw(st.lists(st.tuples(st.integers(3, 20), st.integers(3, 20)), min_size=n_sizes,
                                      max_size=n_sizes)),
                  hidden=draw(flag), text_file=draw(flag), nested=draw(flag), shoots=draw(flag), loose=draw(flag),
                  linked_split=draw(flag) and split_names != [""], linked_file=draw(flag), corrupt=draw(flag),
                  empty_class=draw(flag), test_only_class=draw(flag) and "test" in split_names,
                  duplicate_in_val=draw(flag) and "test" in split_names and "val" in split_names, copied=draw(flag))


def write(layout: Layout, root: Path, elsewhere: Path) -> None:
    rng = np.random.default_rng(0)
    written: list[Path] = []
    for s_i, (split, classes) in enumerate(layout.splits.items()):
        base = root / split if split else root
        if layout.linked_split and s_i == 0 and split:
            target = elsewhere / split
            target.mkdir(parents=True)
            base.parent.mkdir(parents=True, exist_ok=True)
            base.symlink_to(target)
        for c_i, (cls, n) in enumerate(classes.items()):
            (base / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = layout.sizes[(i + c_i) % len(layout.sizes)]
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                img = Image.fromarray(arr).convert(layout.modes[i % len(layout.modes)])
                folder = base / cls / f"shoot {i // (2 + c_i % 2)}" if layout.shoots and not s_i else base / cls
                folder.mkdir(exist_ok=True)
                path = folder / f"img {i}.{'png' if img.mode != 'CMYK' else 'jpg'}"
                img.save(path)
                written.append(path)
    first = next(iter(layout.splits))
    first_dir = root / first if first else root
    if layout.hidden:
        (root / ".DS_Store").write_bytes(b"\0")
        (first_dir / ".thumbs").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(first_dir / ".thumbs" / "t.png")
    if layout.text_file:
        (root / "README.txt").write_text("my photos")
    if layout.empty_class:
        (first_dir / "empty class").mkdir(exist_ok=True)
    if layout.test_only_class and "test" in layout.splits:
        (root / "test" / "only in test").mkdir(parents=True)
        Image.new("RGB", (5, 5), (1, 2, 3)).save(root / "test" / "only in test" / "x.png")
    if layout.duplicate_in_val and written:
        tests = [p for p in written if p.parts[len(root.parts)] == "test"]
        if tests:
            (root / "val" / tests[0].parent.name).mkdir(parents=True, exist_ok=True)
            (root / "val" / tests[0].parent.name / "copy.png").write_bytes(tests[0].read_bytes())
    if written and layout.copied:
        (written[0].parent / "copy.png").write_bytes(written[0].read_bytes())
    if written and layout.linked_file:
        (written[0].parent / "link.png").symlink_to(written[-1])
    if written and layout.corrupt:
        data = written[0].read_bytes()
        written[0].write_bytes(data[: len(data) // 2])
    if written and layout.nested:
        deeper = written[0].parent / "more"
        deeper.mkdir(exist_ok=True)
        Image.new("RGB", (6, 6)).save(deeper / "deep.png")
    if layout.loose:
        Image.new("RGB", (6, 6), (9, 9, 9)).save(first_dir / "loose.png")


def pixels(data) -> set[bytes]:
    return {h.tobytes() for h in data.image_hashes()}


def check_invariants(train, val, test, plan) -> None:
    trained = set(train.labels.tolist())
    assert len(trained) >= 2
    for other in (val, test):
        if other is not None:
            assert set(other.labels.tolist()) <= trained
    if val is not None:
        assert not pixels(val) & pixels(test)
    # what is held out here from the training images never holds a training image's pixels
    if plan.test is plan.train:
        assert not pixels(test) & pixels(train)
    if val is not None and plan.val is plan.train:
        assert not pixels(val) & pixels(train)
    # a sub-folder of a class folder is held out whole (unless it holds every image of its class)
    groups = plan.train.groups
    if groups is not None and plan.test is plan.train:
        assert_whole(groups, plan.train.labels, plan.pool, plan.test_idx)
    if groups is not None and val is not None and plan.val is plan.train:
        assert_whole(groups, plan.train.labels, plan.train_idx, plan.val_idx)


def assert_whole(groups, labels, kept, out) -> None:
    """No group of ``groups`` has images among both ``kept`` and ``out`` positions, but one that holds every image
    its class has among ``kept`` and ``out`` together."""
    pool = np.concatenate([kept, out])
    for g in set(groups[kept]) & set(groups[out]):
        cls = labels[groups == g][0]
        assert set(groups[pool][labels[pool] == cls]) == {g}, g


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts(), on_bad=st.sampled_from(["error", "skip"]), test_is_val=st.booleans())
def test_generated_layouts_load_with_trustworthy_splits_or_stop_with_one_line(layout, on_bad, test_is_val):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        write(layout, root, Path(tmp) / "elsewhere")
        cfg = DataConfig(source=str(root), on_bad_image=on_bad, cache_dir=str(Path(tmp) / "cache"),
                         test_split="validation" if test_is_val else "test")
        try:
            plan = plan_splits(cfg)
            train, val, test = load_planned(plan, cfg)
        except Fm2EdgeError as exc:
            assert "\n" not in str(exc) and str(exc)
            event("refused: " + re.sub(r"'[^']*'", "…", str(exc)).split(";")[0][:70])
            return
        check_invariants(train, val, test, plan)
        event("loaded, with validation" if val is not None else "loaded, no validation")
        if is_grouped(plan.train.groups):
            event("loaded, sub-folders held out whole")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts())
def test_one_epoch_of_training_on_generated_layouts_works_or_says_why(layout):
    import contextlib

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        root.mkdir()
        write(layout, root, Path(tmp) / "elsewhere")
        runs = Path(tmp) / "runs"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["train", "--data.source", str(root), "--data.image_size", "16", "--data.cache_dir",
                       str(Path(tmp) / "cache"), "--model.image_size", "32", "--train.epochs", "1",
                       "--train.device", "cpu", "--run.root", str(runs), "--run.name", "r"])
        event(f"exit {rc}")
        if rc == 0:
            metrics = json.loads((runs / "r" / "metrics.json").read_text())
            assert 0.0 <= metrics["test_acc"] <= 1.0 and set(metrics["splits"]) >= {"train", "test"}
        else:
            lines = err.getvalue().strip().splitlines()
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("fm2edge: error:"), err.getvalue()
            assert not (runs / "r").exists() or not any(p.name != ".lock" for p in (runs / "r").iterdir())


# ---------------------------------------------------------------- flag values and recipes

FLAG_VALUES = st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from(["", "none", "null", "true", "[1, 2]", "{a: 1}", "é", "--x", "3e-4", "nan"]),
                        st.text(max_size=8))
FLAGS = ["--data.val_fraction", "--data.test_fraction", "--data.max_train", "--data.per_class", "--data.image_size",
         "--train.epochs", "--train.lr", "--train.batch_size", "--train.schedule", "--train.augment.crop",
         "--train.augment.scale", "--train.ema", "--train.patience", "--train.select", "--model.image_size",
         "--model.crop_pct", "--run.name", "--seeds"]


@pytest.fixture
def stages_that_only_validate(monkeypatch):
    """The stages' work replaced by nothing: what is tested is parsing and validation, for any value."""
    from fm2edge import cli, stages

    for name, stage in list(stages.STAGES.items()):  # `run` (recipes) stays real: it is what reads the YAML
        idle = stages.Stage(lambda job: {}, stage.job, stage.help)
        monkeypatch.setitem(stages.STAGES, name, idle)
        monkeypatch.setitem(cli.COMMANDS, name, idle)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.tuples(st.sampled_from(FLAGS), FLAG_VALUES), min_size=1, max_size=4))
def test_any_flag_value_is_accepted_or_refused_in_one_line(flags, stages_that_only_validate, capsys):
    argv = ["train", "--data.source", "digits"]
    for flag, value in flags:
        argv += [flag, str(value)]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    event(f"exit {rc}")
    assert rc in (0, 2)
    if rc == 2:
        assert len(err.splitlines()) == 1 and err.startswith("fm2edge: error:"), err


YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=6), st.sampled_from(["${a}", "${nope}", "train", "digits"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.sampled_from(
                                                       ["name", "command", "args", "stages", "data", "source",
                                                        "train", "epochs", "root", "x"]), inner, max_size=3)),
                           max_leaves=12)
GOOD_ARGS = st.fixed_dictionaries({"data": st.fixed_dictionaries({"source": st.sampled_from(["digits", "${a}"])}),
                                   "train": st.fixed_dictionaries({"epochs": st.integers(-1, 3)})})
STAGE = st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c", "a", "b", "a b", "", 3]),
                               "command": st.sampled_from(["train", "train", "probe", "nope", None])},
                              optional={"args": st.one_of(GOOD_ARGS, GOOD_ARGS, YAML_VALUES),
                                        "extra": YAML_VALUES})
CLEAN_STAGES = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]), "command": st.just("train"),
                                               "args": GOOD_ARGS}), min_size=1, max_size=3,
                        unique_by=lambda stage: stage["name"])
MESSY_RECIPES = st.fixed_dictionaries({"stages": st.lists(st.one_of(STAGE, STAGE, YAML_VALUES), max_size=3)},
                                      optional={"name": YAML_VALUES, "x": YAML_VALUES})
RECIPES = st.one_of(YAML_VALUES, st.fixed_dictionaries({"stages": CLEAN_STAGES}), MESSY_RECIPES)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recipe=RECIPES)
def test_any_recipe_runs_or_is_refused_in_one_line(recipe, stages_that_only_validate, capsys, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    rc = main(["run", str(path), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    event(f"exit {rc}")
    assert rc in (0, 2)
    if rc == 2:
        assert len(err.splitlines()) == 1 and err.startswith("fm2edge: error:"), err
