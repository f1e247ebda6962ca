"""constraints.txt pins what decides the numbers: every dependency at one exact version (torch by the Makefile)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    """{normalized name: version} of constraints.txt."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: '{line}' is not name==version"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


def test_every_dependency_is_pinned_within_pyproject():
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = pins()
    assert "torch" not in pinned and "llmpath" not in pinned, "torch is pinned by TORCH_SPEC in the Makefile"
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = requirements.Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            continue
        assert name in pinned, f"{req.name} is not in constraints.txt: run make lock"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject's {spec}: run make lock"


def test_the_makefile_installs_with_the_constraints():
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "CONSTRAINTS ?= constraints.txt" in make
    for target in ("pip install -e . $(PIP_C)", 'pip install -e ".[dev]" $(PIP_C)', '"$(TORCH_SPEC)" $(PIP_C)'):
        assert target in make, target
    assert re.search(r"^lock:", make, re.M), "make lock regenerates constraints.txt"
