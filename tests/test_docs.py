"""docs/figures.py: the one way figures reach docs/ (the package never writes into the repository)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _figures_module():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "docs" / "figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_copied_figure_is_one_a_tutorial_shows():
    shown = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "tutorials").glob("*.md"))
    for name in _figures_module().FIGURES:
        assert f"figures/{name}" in shown, name


def test_copy_takes_finished_runs_and_lists_the_missing(tmp_path):
    mod = _figures_module()
    src = tmp_path / "runs" / "transformer" / "small" / "figures" / "structure.png"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"png")
    copied, missing = mod.copy_figures(tmp_path / "runs", tmp_path / "docs")
    assert copied == ["04_structure.png"] and (tmp_path / "docs" / "04_structure.png").read_bytes() == b"png"
    assert len(missing) == len(mod.FIGURES) - 1 and all("draw it with `llmpath" in m for m in missing)


def test_the_package_names_no_repository_folder():
    for path in (ROOT / "src" / "llmpath").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "parents[3]" not in text and '"docs"' not in text, path
