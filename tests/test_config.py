from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fm2edge.cli import COMMANDS, build_parser
from fm2edge.config import AugmentConfig, DataConfig, TrainConfig, TrainJob, is_resolved, proven_recipe, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def parse(argv):
    parser = build_parser()
    cfg = parser.parse_args(argv)
    ns = parser.instantiate(cfg)[cfg.command]
    return COMMANDS[cfg.command].job(**{k: v for k, v in vars(ns).items() if k != "config"})


def test_precedence_defaults_yaml_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"train": {"epochs": 7, "lr": 0.01}, "data": {"max_train": 100}}))
    job = parse(["train"])
    assert job.train.epochs == TrainConfig().epochs  # default
    job = parse(["train", "--config", str(cfg_file)])
    assert (job.train.epochs, job.train.lr, job.data.max_train) == (7, 0.01, 100)  # YAML over defaults
    job = parse(["train", "--config", str(cfg_file), "--train.epochs", "9"])
    assert (job.train.epochs, job.train.lr) == (9, 0.01)  # flag over YAML, the rest kept
    assert isinstance(job, TrainJob) and isinstance(job.data, DataConfig)


def test_unknown_yaml_key_is_an_error(tmp_path):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(yaml.safe_dump({"train": {"epoch": 3}}))
    with pytest.raises(Exception, match="epoch"):
        parse(["train", "--config", str(cfg_file)])


def test_unknown_flag_is_an_error():
    with pytest.raises(Exception, match="learning_rate"):
        parse(["train", "--train.learning_rate", "0.1"])


def test_wrong_type_is_an_error():
    with pytest.raises(Exception, match="epochs"):
        parse(["train", "--train.epochs", "three"])


def test_validation_in_post_init():
    with pytest.raises(ValueError, match="train.epochs must be at least 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="data.test_fraction"):
        DataConfig(test_fraction=1.5)


RECIPES = [p for p in CONFIGS if "stages" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_yaml_loads(path):
    if path in RECIPES:  # every stage's settings must build its job (nothing runs)
        from fm2edge.recipe import load_recipe, substitute
        from fm2edge.stagecache import place
        from fm2edge.stages import STAGES, job_from_dict

        recipe = load_recipe(path)
        folders = {s["name"]: f"runs/x/{s['name']}" for s in recipe["stages"]}
        for stage in recipe["stages"]:
            args = place(stage["command"], STAGES[stage["command"]].job, substitute(stage.get("args", {}), folders),
                         Path(folders[stage["name"]]), Path("runs/x"))
            assert job_from_dict(stage["command"], args) is not None
    else:
        assert parse(["train", "--config", str(path)]) is not None


def test_demo_yaml_is_the_packaged_demo_recipe():
    from importlib import resources

    shipped = (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text()
    assert shipped == resources.files("fm2edge.recipes").joinpath("demo.yaml").read_text()


def test_dict_round_trip():
    """A job's dict (what config.yaml holds) builds the same job through the parser recipes use."""
    from fm2edge.errors import Fm2EdgeError
    from fm2edge.stages import job_from_dict

    job = TrainJob()
    assert job_from_dict("train", to_dict(job)) == job
    with pytest.raises(Fm2EdgeError, match="nope"):
        job_from_dict("train", {"nope": 1})


@settings(max_examples=40, deadline=None)
@given(epochs=st.integers(-3, 50), lr=st.floats(-1, 1, allow_nan=False), bs=st.integers(-2, 4096),
       smoothing=st.floats(-0.5, 1.5, allow_nan=False))
def test_train_config_accepts_exactly_the_valid_values(epochs, lr, bs, smoothing):
    valid = epochs >= 1 and lr > 0 and bs >= 1 and 0 <= smoothing < 1
    try:
        TrainConfig(epochs=epochs, lr=lr, batch_size=bs, label_smoothing=smoothing)
        ok = True
    except ValueError:
        ok = False
    assert ok == valid


def test_left_empty_the_training_settings_are_the_proven_recipe():
    photos = proven_recipe(TrainConfig(), images=200, image_px=128, trained=True)
    assert (photos.epochs, photos.lr, photos.weight_decay, photos.optimizer, photos.schedule) == \
        (30, 5e-4, 0.05, "adamw", "onecycle")
    assert photos.augment.crop == "resized" and photos.augment.flip is True
    digits = proven_recipe(TrainConfig(), images=1200, image_px=8, trained=False)
    assert (digits.lr, digits.weight_decay, digits.augment.crop, digits.augment.flip) == (4e-3, 5e-4, "none", False)
    # epochs scale with the training set: 30 up to 10,000 images, then about 300,000 images seen, at least 10
    assert [proven_recipe(TrainConfig(), n, 32, False).epochs for n in (50, 10_000, 20_000, 50_000)] == [30, 30, 15, 10]
    # what a user sets is kept as set
    mine = TrainConfig(epochs=3, lr=1e-2, weight_decay=0.0, augment=AugmentConfig(crop="pad", flip=False),
                       head_init="random", freeze_bn=False)
    assert proven_recipe(mine, 200, 128, True) == mine
    assert not is_resolved(TrainConfig()) and is_resolved(proven_recipe(TrainConfig(), 10, 8, False))


def test_from_pretrained_weights_the_recipe_is_lp_ft_with_the_statistics_kept():
    """As `fm2edge auto` trains its pretrained students: the head first fitted as a probe, BatchNorm statistics
    kept; from a run folder's weights or random ones neither, and what a user sets is kept."""
    pre = proven_recipe(TrainConfig(), 200, 128, trained=True, pretrained=True)
    assert (pre.head_init, pre.freeze_bn) == ("probe", True) and is_resolved(pre)
    for trained in (True, False):
        other = proven_recipe(TrainConfig(), 200, 128, trained=trained)
        assert (other.head_init, other.freeze_bn) == ("random", False)
    mine = proven_recipe(TrainConfig(head_init="random", freeze_bn=False), 200, 128, True, pretrained=True)
    assert (mine.head_init, mine.freeze_bn) == ("random", False)
    assert not is_resolved(dataclasses.replace(pre, head_init="auto"))
    assert not is_resolved(dataclasses.replace(pre, freeze_bn=None))


def test_the_training_loop_refuses_settings_left_unfilled():
    from fm2edge.train import fit

    with pytest.raises(ValueError, match="proven_recipe"):
        fit(None, None, None, None, None, TrainConfig(), None, None)
