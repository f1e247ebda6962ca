"""Every notebook runs top to bottom (on the tiny preset), is committed with outputs stripped, and has a
current executed copy in docs/notebooks/ (written by `make docs-notebooks`, rendered by GitHub)."""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXECUTED = ROOT / "docs" / "notebooks"
MAX_BYTES = 1_500_000  # as docs/notebooks.py
IDS = [p.stem for p in NOTEBOOKS]


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _script():
    spec = importlib.util.spec_from_file_location("docs_notebooks", ROOT / "docs" / "notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_outputs_are_stripped(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    for cell in code_cells(nb):
        assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebooks_teach_with_library_calls(path):
    """Experiments on the library's functions, not the command line wrapped in a cell."""
    nbformat = pytest.importorskip("nbformat")
    for cell in code_cells(nbformat.read(path, as_version=4)):
        assert "main([" not in cell.source and "llmpath.cli import main" not in cell.source, \
            f"{path.name}: call the library's functions instead of llmpath.cli.main([...])"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_executed_copy_is_current(path):
    nbformat = pytest.importorskip("nbformat")
    copy = EXECUTED / path.name
    redo = f"run `make docs-notebooks` (or python docs/notebooks.py {path.stem}) and commit docs/notebooks/{path.name}"
    assert copy.exists(), f"{path.name} has no executed copy: {redo}"
    src, done = code_cells(nbformat.read(path, as_version=4)), code_cells(nbformat.read(copy, as_version=4))
    assert [c.source for c in done] == [c.source for c in src], f"{path.name} changed since its copy was executed: {redo}"
    assert all(c.execution_count is not None for c in done), f"docs/notebooks/{path.name} has unexecuted cells: {redo}"
    assert copy.stat().st_size <= MAX_BYTES, f"docs/notebooks/{path.name} is over 1.5 MB: lower its figures' dpi"


def test_script_joins_streamed_prints_and_names_unknown_notebooks(capsys):
    nbformat = pytest.importorskip("nbformat")
    mod = _script()
    cell = nbformat.v4.new_code_cell("for c in 'ab': print(c, end='')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in "ab"]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="log"))
    nb = nbformat.v4.new_notebook(cells=[cell])
    mod.merge_streams(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [("stdout", "ab"), ("stderr", "log")]
    with pytest.raises(SystemExit):
        mod.main(["01_mpl"])
    assert "no notebook '01_mpl'; choose from: 01_mlp" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    # the kernel imports llmpath from this checkout's src/ (a relative PYTHONPATH=src would not reach it from tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    # cwd is a temporary folder, so runs/ written by the notebook never touches the repo
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
