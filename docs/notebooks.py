"""Executed copies of the notebooks (`make docs-notebooks`), so that a reader on GitHub sees their outputs.

notebooks/*.ipynb are committed with outputs stripped (tests/test_notebooks.py checks it). This script runs
each one top to bottom with nbclient, with a temporary folder as its working directory (so the runs/ it writes
never lands in the repository), and writes the copy with its outputs to docs/notebooks/<same name>.ipynb, which
GitHub renders. tests/test_notebooks.py checks that every notebook has a copy with the same code cells, all
executed: after editing a notebook, run this again and commit both.

    python docs/notebooks.py                  # every notebook (a few minutes on 2 cores)
    python docs/notebooks.py 02_rnn_lstm      # only the ones named
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs" / "notebooks"
MAX_BYTES = 1_500_000  # an executed copy above this is slow to open on GitHub: lower its figures' dpi


def execute(path: Path, out_dir: Path = DOCS, timeout: int = 600) -> Path:
    """Run one notebook in a temporary folder; write the executed copy to out_dir (its path)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="llmpath-notebook-") as tmp:
        # record_timing=False: no per-cell timestamps, so a regenerated copy differs only where outputs do
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                         resources={"metadata": {"path": tmp}})
        client.execute()
    merge_streams(nb)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    nbformat.write(nb, out)
    return out


def merge_streams(nb) -> None:
    """Join each cell's consecutive stdout (or stderr) outputs into one, as Jupyter does when it saves.

    print(..., end="", flush=True) in a loop otherwise leaves one output per call: one line each on GitHub.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list = []
        for out in cell.outputs:
            if merged and out.output_type == merged[-1].output_type == "stream" and out.name == merged[-1].name:
                merged[-1].text += out.text
            else:
                merged.append(out)
        cell.outputs = merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="notebook names without .ipynb, e.g. 01_mlp (default: all)")
    p.add_argument("--timeout", type=int, default=600, help="seconds one cell may run")
    args = p.parse_args(argv)
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.names:
        known = {q.stem: q for q in paths}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            p.error(f"no notebook '{unknown[0]}'; choose from: {', '.join(known)}")
        paths = [known[n] for n in args.names]
    # the kernel imports llmpath from this checkout's src/, whatever else is installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    too_big = []
    for path in paths:
        t0 = time.time()
        out = execute(path, timeout=args.timeout)
        size = out.stat().st_size
        print(f"{out.relative_to(ROOT)}: {size / 1e6:.2f} MB, {time.time() - t0:.0f} s")
        if size > MAX_BYTES:
            too_big.append(out.name)
    if too_big:
        print(f"over {MAX_BYTES / 1e6:.1f} MB: {', '.join(too_big)}; lower the dpi of their figures in the notebook",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
