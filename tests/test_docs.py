"""docs/figures.py: the one way figures reach docs/ (the package never writes into the repository)."""

import ast
import importlib.util
import re
import textwrap
from pathlib import Path

import pytest

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


def test_every_diagram_is_shown_and_draws(tmp_path):
    mod = _figures_module()
    shown = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "tutorials").glob("*.md"))
    assert not set(mod.DIAGRAMS) & set(mod.FIGURES)
    for name in mod.DIAGRAMS:
        assert f"figures/{name}" in shown, name
    assert mod.draw_diagrams(tmp_path) == list(mod.DIAGRAMS)
    assert all((tmp_path / n).stat().st_size > 5_000 for n in mod.DIAGRAMS)


def test_the_package_names_no_repository_folder():
    for path in (ROOT / "src" / "llmpath").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "parents[3]" not in text and '"docs"' not in text, path


# ------------------------------------------------------------------ code shown in the tutorials

SOURCE = re.compile(r"<!-- source: (?P<file>[\w/.]+)::(?P<name>[\w.]+) -->\n```python\n(?P<code>.*?)```", re.S)
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))


def source_of(file: str, name: str) -> str:
    """The exact source of a function, class or Class.method in a repository file, dedented."""
    text = (ROOT / file).read_text(encoding="utf-8")
    node: ast.AST = ast.parse(text)
    for part in name.split("."):
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.name == part)
    lines = text.splitlines(keepends=True)
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    return textwrap.dedent("".join(lines[start:node.end_lineno]))


def test_a_source_block_is_read_and_compared():
    body = source_of("src/llmpath/common.py", "count_params")
    m = SOURCE.search(f"text\n<!-- source: src/llmpath/common.py::count_params -->\n```python\n{body}```\nmore")
    assert m and m["code"] == body and m["name"] == "count_params"


def test_source_of_finds_functions_methods_and_classes():
    assert source_of("src/llmpath/common.py", "count_params").startswith("def count_params(")
    assert source_of("src/llmpath/runs.py", "Run.meta").startswith("def meta(self)")


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_code_shown_in_a_tutorial_is_the_code_that_runs(path):
    """A block after `<!-- source: src/llmpath/x.py::name -->` must equal that function's source, so the text
    never drifts from the library."""
    for m in SOURCE.finditer(path.read_text(encoding="utf-8")):
        assert m["code"] == source_of(m["file"], m["name"]), f"{path.name}: {m['file']}::{m['name']} changed; copy it again"


def test_no_document_holds_a_control_character():
    # a LaTeX backslash eaten by a Python string: "\times" written as a tab, "\approx" as a bell
    docs = [*(ROOT / "docs").rglob("*.md"), *ROOT.glob("README*.md"), ROOT / "benchmarks" / "README.md"]
    assert len(docs) > 15
    for path in docs:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            bad = [c for c in line if ord(c) < 32]
            assert not bad, f"{path.relative_to(ROOT)}:{n} holds {bad!r}"
