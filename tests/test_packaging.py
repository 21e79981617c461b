"""Packaging: the floors pyproject.toml declares are the versions `.ci/floors` installs and tests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("docs", "dev", "all")  # extras of tools (docs, tests) or of other extras: no floor of their own to test


def canonical(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503), extras dropped."""
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def declared_floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra, deps in project["optional-dependencies"].items():
        if extra not in TOOLS:
            specs += deps
    floors = {}
    for spec in specs:
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", spec.strip())
        assert match, f"{spec!r}: every dependency needs a floor (NAME>=VERSION) that .ci/floors tests"
        floors[canonical(match[1])] = match[2]
    return floors


def pinned_floors() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def same_release(floor: str, pin: str) -> bool:
    """``>=1.0`` is met first by 1.0 or 1.0.0 (pip compares releases padded with zeros)."""
    def parts(v: str) -> list[int]:
        return [int(p) for p in v.split(".")]

    a, b = parts(floor), parts(pin)
    width = max(len(a), len(b))
    return a + [0] * (width - len(a)) == b + [0] * (width - len(b))


def test_every_declared_floor_is_the_release_the_floors_job_installs():
    declared, pinned = declared_floors(), pinned_floors()
    assert set(declared) == set(pinned), (f"declared but not pinned: {sorted(set(declared) - set(pinned))}; "
                                          f"pinned but not declared: {sorted(set(pinned) - set(declared))}")
    differ = {n: (declared[n], pinned[n]) for n in declared if not same_release(declared[n], pinned[n])}
    assert not differ, f"pyproject.toml floor vs .ci/floors.txt pin: {differ}"


def test_the_license_file_matches_the_declared_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert project["license"]["text"] == "Apache-2.0"
