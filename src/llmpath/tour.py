"""`llmpath tour`: run every stage's preset in learning-path order and write a summary report.

Each stage is a function `tour(preset, out, fresh) -> dict` in its topic's cli module returning
    {"metric": str, "value": float, "bar": str, "passed": bool, "table": markdown, "figures": [paths]}
One stage failing does not stop the others; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from llmpath.common import setup_logging, write_json
from llmpath.config import ConfigError, RunConfig, build_config, opt

# (number, topic, title, "module:function"), in learning-path order.
STAGES: list[tuple[str, str, str, str]] = [
    ("1", "mlp", "MLP 与手写反向传播：文本分类", "llmpath.mlp.cli:tour"),
]


@dataclass
class TourConfig(RunConfig):
    only: str = opt("", "comma-separated stage numbers or topics to run (default: all)")
    yes: bool = opt(False, "do not ask: run the chosen stages (non-interactive)")
    fresh: bool = opt(False, "retrain even when a finished run exists")


def _select(only: str) -> list[tuple[str, str, str, str]]:
    if not only or only.strip() == "0":
        return list(STAGES)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    valid = {s[0] for s in STAGES} | {s[1] for s in STAGES}
    bad = [w for w in wanted if w not in valid]
    if bad:
        raise ConfigError(f"unknown stage '{bad[0]}' in --only; choose from: "
                          + ", ".join(f"{s[0]}={s[1]}" for s in STAGES))
    return [s for s in STAGES if s[0] in wanted or s[1] in wanted]


def _menu() -> str:
    print("llmpath tour: 大模型学习进化之路\n")
    print("  0. 全部 (all)")
    for num, topic, title, _ in STAGES:
        print(f"  {num}. {title}  [{topic}]")
    return input("\nchoose stages (e.g. 0, or 1,3) [0]: ").strip().replace(" ", ",") or "0"


def run_stage(stage: tuple[str, str, str, str], preset: str, out: str, fresh: bool) -> dict:
    num, topic, title, target = stage
    modname, fn = target.split(":")
    t0 = time.time()
    try:
        res = getattr(importlib.import_module(modname), fn)(preset=preset, out=out, fresh=fresh)
    except Exception as e:  # one stage failing must not stop the tour
        traceback.print_exc()
        res = {"metric": "error", "value": float("nan"), "bar": "", "passed": False,
               "table": f"failed: {type(e).__name__}: {e}", "figures": []}
    res.update(stage=num, topic=topic, title=title, seconds=round(time.time() - t0, 1))
    res["figures"] = [str(p) for p in res.get("figures", [])]
    return res


def summary_table(results: list[dict]) -> str:
    lines = ["| stage | topic | metric | value | bar | pass | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        v = r["value"]
        vs = f"{v:.4g}" if isinstance(v, float) else str(v)
        lines.append(f"| {r['stage']} | {r['topic']} | {r['metric']} | {vs} | {r['bar']} | "
                     f"{'PASS' if r['passed'] else 'FAIL'} | {r['seconds']} |")
    return "\n".join(lines)


def write_report(results: list[dict], out: Path, total_s: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# llmpath tour report\n", f"total wall time: {total_s:.0f} s\n", summary_table(results), ""]
    for r in results:
        parts += [f"\n## {r['stage']}. {r['title']} ({r['topic']})\n", r.get("table", ""), ""]
        for f in r["figures"]:
            parts.append(f"![{Path(f).stem}]({Path(f).resolve().as_posix()})")
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    write_json(out / "summary.json", {"total_seconds": total_s, "stages": results})
    return path


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from llmpath.config import help_text

        print("usage: llmpath tour [--only=1,2] [--preset=small] [--yes] [--fresh]\n\n" + help_text(TourConfig))
        return 0
    setup_logging()
    cfg = build_config(TourConfig, argv, presets={"tiny": {}, "small": {}}, default_preset="small")
    only = cfg.only
    if not cfg.yes and not only and sys.stdin.isatty():
        only = _menu()
    stages = _select(only)
    t0 = time.time()
    results = []
    for stage in stages:
        print(f"\n=== stage {stage[0]}: {stage[2]} ({stage[1]}, preset {cfg.preset}) ===", flush=True)
        results.append(run_stage(stage, cfg.preset, cfg.out, cfg.fresh))
    total = time.time() - t0
    report = write_report(results, Path(cfg.out) / "tour", total)
    print("\n" + summary_table(results))
    print(f"\ntotal {total:.0f} s; report: {report}")
    return 0 if all(r["passed"] for r in results) else 1
