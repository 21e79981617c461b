from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fm2edge.cli import main
from fm2edge.errors import Fm2EdgeError
from fm2edge.recipe import check_recipe, run_recipe

RECIPE = {
    "name": "tiny",
    "stages": [
        {"name": "scratch", "command": "train",
         "args": {"data": {"source": "digits", "max_train": 200, "max_test": 60},
                  "model": {"name": "student:small_cnn"}, "train": {"epochs": 1, "batch_size": 32, "device": "cpu"}}},
        {"name": "export", "command": "export",
         "args": {"model": "${scratch}", "data": {"source": "digits", "max_train": 200, "max_test": 60},
                  "export": {"int8": False, "latency_runs": 3}}},
        {"name": "report", "command": "report", "args": {"title": "tiny"}},
    ],
}


def _mtimes(root):
    return {p: (root / p).stat().st_mtime_ns for p in ("scratch/model.safetensors", "export/model.onnx",
                                                        "report/report.html")}


def test_unchanged_stages_are_skipped_and_a_change_reruns_that_stage_and_later(tmp_path, capsys):
    root = tmp_path / "tiny"
    run_recipe(RECIPE, root)
    first = _mtimes(root)
    capsys.readouterr()
    results = run_recipe(RECIPE, root)  # unchanged: no training, no export, no report
    assert _mtimes(root) == first
    assert capsys.readouterr().out.count("unchanged, skipped") == 3
    assert results["scratch"]["test_acc"] == json.loads((root / "scratch" / "metrics.json").read_text())["test_acc"]
    changed = json.loads(json.dumps(RECIPE))
    changed["stages"][1]["args"]["export"]["opset"] = 18
    run_recipe(changed, root)
    after = _mtimes(root)
    assert after["scratch/model.safetensors"] == first["scratch/model.safetensors"]  # before the change: kept
    assert after["export/model.onnx"] != first["export/model.onnx"]
    assert after["report/report.html"] != first["report/report.html"]


def test_an_interrupted_stage_runs_again(tmp_path, capsys):
    root = tmp_path / "tiny"
    run_recipe(RECIPE, root)
    (root / ".stages" / "export.json").unlink()  # as if killed before export finished
    capsys.readouterr()
    run_recipe(RECIPE, root)
    out = capsys.readouterr().out
    assert "== scratch (train): unchanged, skipped" in out and "== export (export)\n" in out


def test_run_command_reads_a_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "stages": RECIPE["stages"][:1]}))
    assert main(["run", str(path), "--root", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tiny" / "scratch" / "model.safetensors").exists()


@pytest.mark.parametrize("edit,match", [
    (lambda r: r["stages"][1].update(command="fly"), "has command 'fly'"),
    (lambda r: r["stages"][1].update(name="scratch"), "unique plain name"),
    (lambda r: r["stages"][1]["args"].update(model="${later}"), "not an earlier stage"),
    (lambda r: r.update(stage=[]), "unknown keys"),
])
def test_bad_recipes_are_refused_before_anything_runs(edit, match):
    recipe = json.loads(json.dumps(RECIPE))
    edit(recipe)
    with pytest.raises(Fm2EdgeError, match=match):
        check_recipe(recipe)


def test_a_bad_stage_setting_names_the_stage_command(tmp_path):
    recipe = json.loads(json.dumps(RECIPE))
    recipe["stages"][0]["args"]["train"]["epoch"] = 3
    with pytest.raises(Fm2EdgeError, match="train settings"):
        run_recipe(check_recipe(recipe), tmp_path / "x")


def test_demo_without_the_pretrained_package_says_it_uses_random_weights():
    from fm2edge.config import DemoJob
    from fm2edge.demo import TEACHER, demo_recipe, teacher_label

    for pretrained in (True, False):
        recipe = demo_recipe(DemoJob(), pretrained=pretrained)
        teachers = [s["args"]["model"] for s in recipe["stages"]
                    if isinstance(s.get("args", {}).get("model"), dict) and s["args"]["model"]["name"] == TEACHER]
        assert teachers
        if not pretrained:
            assert not any(m["pretrained"] for m in teachers)
    assert teacher_label(False) == f"{TEACHER} (random weights)"
    assert teacher_label(True) == f"{TEACHER} (pretrained)"


def test_a_stage_key_counts_paths_from_the_root_and_moved_records_point_to_where_the_folder_is():
    from fm2edge.stagecache import moved, stage_key

    args = {"distill": {"teacher": "/a/run/teacher"}, "run": {"root": "/a/run", "name": "s"}, "data": "/data"}
    there = {"distill": {"teacher": "/b/x/teacher"}, "run": {"root": "/b/x", "name": "s"}, "data": "/data"}
    assert stage_key("distill", args, "", Path("/a/run")) == stage_key("distill", there, "", Path("/b/x"))
    assert stage_key("distill", args, "") != stage_key("distill", there, "")
    assert stage_key("distill", {**args, "data": "/other"}, "", Path("/a/run")) != \
        stage_key("distill", args, "", Path("/a/run"))
    assert moved(args, "/a/run", "/b/x") == there
    assert moved({"p": ["/a/runner", "/a/run"]}, "/a/run", "/b/x") == {"p": ["/a/runner", "/b/x"]}
