"""The docs site builds strictly from the code: each command's option tables come from the config classes (a changed
field docstring changes the page and `--help` alike), and a command without a page or a public name without a
docstring fails the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def project(tmp_path) -> Path:
    """A copy of the package, the docs and mkdocs.yml to change without touching the checkout."""
    for name in ("src", "docs"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    return tmp_path


def build(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(project / "site")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_a_changed_field_docstring_changes_the_page_and_the_help(project):
    replace_in(project / "src/fm2edge/config.py", "opset: ONNX opset version.",
               "opset: ONNX opset version, as the docs test wrote it.")
    replace_in(project / "src/fm2edge/config.py", "epochs: Passes over the training set;",
               "epochs: Passes (docs test) over the training set;")
    done = build(project)
    assert done.returncode == 0, done.stderr[-2000:]
    export_page = (project / "site/commands/export/index.html").read_text()
    assert "ONNX opset version, as the docs test wrote it." in export_page
    assert "export.calibration_method" in export_page and "minmax" in export_page
    for command in ("train", "distill"):
        page = (project / f"site/commands/{command}/index.html").read_text()
        assert "Passes (docs test) over the training set;" in page, command
    assert "ONNX opset version, as the docs test wrote it." not in (ROOT / "src/fm2edge/config.py").read_text()
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "COLUMNS": "400"}
    help_text = subprocess.run([sys.executable, "-m", "fm2edge", "export", "--help"], env=env, capture_output=True,
                               text=True, timeout=120).stdout
    assert "ONNX opset version, as the docs test wrote it." in " ".join(help_text.split())


def test_a_command_without_a_page_fails_the_build(project):
    (project / "docs/commands/push.md").unlink()
    done = build(project)
    assert done.returncode != 0 and "no page for the command(s) push" in done.stderr


def test_an_undocumented_public_function_fails_the_build(project):
    init = project / "src/fm2edge/__init__.py"
    text = init.read_text()
    body = text.index("def run_stage")
    doc = text.index('"""', body)
    init.write_text(text[:doc] + text[text.index('"""', doc + 3) + 3:])  # run_stage without its docstring
    done = build(project)
    assert done.returncode != 0 and "public names without a docstring: fm2edge.run_stage" in done.stderr


def test_a_broken_link_fails_the_build(project):
    (project / "docs/troubleshooting.md").write_text("# Troubleshooting\n\nSee [the missing page](missing.md).\n")
    done = build(project)
    assert done.returncode != 0 and "missing.md" in done.stderr
