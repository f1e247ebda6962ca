"""`llmpath tour`: run every stage's preset in learning-path order and write the report.

The stages are the topics of llmpath.topics that have a stage number; each one's cli module has
`tour(preset, out, fresh) -> StageResult`. One stage failing does not stop the others; the exit code is non-zero if any failed. The report is
runs/tour/report.html (one self-contained page, figures embedded) and runs/tour/report.md.
"""

from __future__ import annotations

import base64
import html
import io
import importlib
import json
import os
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmpath.common import markdown_table, setup_logging, write_json
from llmpath.config import ConfigError, RunConfig, build_config, opt
from llmpath.topics import TOPIC_LIST, Topic

STAGES: list[Topic] = [t for t in TOPIC_LIST if t.stage]  # learning-path order


@dataclass
class StageResult:
    """What every topic's `tour()` returns: the headline metric against its bar, the table and figures."""

    metric: str
    value: float
    bar: str
    passed: bool
    table: str = ""
    figures: list = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class TourConfig(RunConfig):
    only: str = opt("", "comma-separated stage numbers or topics to run (default: all)")
    yes: bool = opt(False, "do not ask: run the chosen stages (non-interactive)")


def _select(only: str) -> list[Topic]:
    if not only or only.strip() == "0":
        return list(STAGES)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    valid = {s.stage for s in STAGES} | {s.name for s in STAGES}
    bad = [w for w in wanted if w not in valid]
    if bad:
        raise ConfigError(f"unknown stage '{bad[0]}' in --only; choose from: 0=all, "
                          + ", ".join(f"{s.stage}={s.name}" for s in STAGES))
    return [s for s in STAGES if s.stage in wanted or s.name in wanted]


def _menu() -> str:
    print("llmpath tour: 大模型学习进化之路\n")
    print("  0. 全部 (all)")
    for s in STAGES:
        print(f"  {s.stage}. {s.stage_title}  [{s.name}]")
    return input("\nchoose stages (e.g. 0, or 1,3) [0]: ").strip().replace(" ", ",") or "0"


def stage_function(stage: Topic):
    """The stage's `tour(preset, out, fresh) -> StageResult`."""
    return importlib.import_module(stage.cli).tour


def run_stage(stage: Topic, preset: str, out: str, fresh: bool) -> dict:
    t0 = time.time()
    try:
        res = stage_function(stage)(preset=preset, out=out, fresh=fresh)
    except Exception as e:  # one stage failing must not stop the tour
        traceback.print_exc()
        res = StageResult("error", float("nan"), "", False, f"failed: {type(e).__name__}: {e}")
    res = asdict(res)
    res.update(stage=stage.stage, topic=stage.name, title=stage.stage_title, seconds=round(time.time() - t0, 1))
    res["figures"] = [str(p) for p in res["figures"]]
    return res


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_rows(results: list[dict]) -> list[list[str]]:
    return [[r["stage"], r["topic"], r["metric"], _fmt(r["value"]), r["bar"], "PASS" if r["passed"] else "FAIL",
             f"{r['seconds']:.0f}" + (" (earlier run)" if r.get("earlier") else "")] for r in results]


SUMMARY_HEAD = ["阶段", "主题", "指标", "数值", "门槛", "结果", "秒"]


def summary_table(results: list[dict]) -> str:
    return markdown_table(SUMMARY_HEAD, summary_rows(results), "l" * len(SUMMARY_HEAD))


# ----------------------------------------------------------------------------- report

def write_markdown(results: list[dict], out: Path, total_s: float) -> Path:
    parts = ["# llmpath tour report\n", f"Total wall time: {total_s:.0f} s\n", summary_table(results)]
    for r in results:
        stage = _stage(r["stage"])
        parts += [f"\n## {r['stage']}. {r['title']} (`{r['topic']}`)\n", stage.teaches if stage else "", "",
                  r.get("table", ""), ""]
        parts += [f"![{Path(f).stem}]({_rel(f, out)})" for f in r["figures"]]
        if stage:
            parts += ["", f"Tutorial: `{stage.tutorial}` · Notebook: `{stage.notebook}`"]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _stage(num: str) -> Topic | None:
    return next((s for s in STAGES if s.stage == num), None)


def _rel(path: str, base: Path) -> str:
    """Path of a file relative to the report folder (links work when the run folder moves)."""
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


_CSS = """body{font-family:"llmpath CJK",system-ui,-apple-system,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.55}h1{border-bottom:2px solid #4a6fa5}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#eef2f8}.pass{color:#0a7d2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:520px;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555;text-align:center}code{background:#f3f3f3;padding:0 3px}
pre,code{font-family:"llmpath CJK",ui-monospace,"DejaVu Sans Mono",monospace}
section{border-top:1px solid #ddd;margin-top:2em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"""


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def markdown_to_html(md: str) -> str:
    """Enough Markdown for result tables: pipe tables, headings, code blocks, lists, paragraphs."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        if line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells if c):
                    rows.append(cells)
                i += 1
            head, *body = rows or [[]]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            continue
        m = re.match(r"(#{1,4})\s+(.*)", line)
        if m:
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif line.lstrip().startswith(("- ", "* ")):
            out.append(f"<li>{_inline(line.lstrip()[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def _img(path: str) -> str:
    p = Path(path)
    if not p.exists():
        return f"<p class='fail'>missing figure: {html.escape(p.name)}</p>"
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(p.stem)}</figcaption></figure>")


def cjk_font_face(text: str) -> str:
    """A CSS @font-face with the CJK font (the one our figures use) cut down to the characters of `text`.

    Browsers on machines without a Chinese font (a bare Linux box) would draw boxes; embedding just the
    glyphs the page uses keeps the report one self-contained file (tens of kB, not the font's 16 MB).
    Returns "" when the font or fontTools (a matplotlib dependency) is missing.
    """
    from llmpath.plotting import cjk_font_files

    files = cjk_font_files()
    chars = "".join(sorted({c for c in text if 0x2E80 <= ord(c) <= 0xFFEF}))  # CJK and full-width punctuation
    if not files or not chars:
        return ""
    try:
        from fontTools import subset
    except ImportError:
        return ""
    options = subset.Options()
    options.name_IDs, options.hinting, options.layout_features = ["*"], False, []
    font = subset.load_font(str(files[0]), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=chars)
    subsetter.subset(font)
    buf = io.BytesIO()
    subset.save_font(font, buf, options)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    # first in every font-family list, limited to CJK code points: the browser waits for it instead of
    # shaping those characters with a fallback font (Chromium kept such fallback boxes after the load)
    return ("@font-face{font-family:'llmpath CJK';src:url(data:font/otf;base64," + data + ") format('opentype');"
            "unicode-range:U+2E80-9FFF,U+F900-FAFF,U+FE30-FE4F,U+FF00-FFEF;font-display:block}")


def write_html(results: list[dict], out: Path, total_s: float) -> Path:
    rows = "".join("<tr>" + "".join(f"<td class='{c.lower()}'>{html.escape(c)}</td>" if c in ("PASS", "FAIL")
                                    else f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in summary_rows(results))
    body = [f"<h1>llmpath 学习之旅报告 (tour report)</h1><p>大模型学习进化之路 · total wall time {total_s:.0f} s · "
            f"{sum(r['passed'] for r in results)}/{len(results)} stages passed</p>",
            "<table id='summary'><tr>" + "".join(f"<th>{h}</th>" for h in SUMMARY_HEAD) + f"</tr>{rows}</table>"]
    for r in results:
        stage = _stage(r["stage"])
        body.append(f"<section id='stage-{r['stage']}'><h2>{r['stage']}. {html.escape(r['title'])} "
                    f"(<code>{r['topic']}</code>)</h2><p>{html.escape(stage.teaches if stage else '')}</p>")
        body.append(markdown_to_html(r.get("table", "")))
        body.append("".join(_img(f) for f in r["figures"]))
        links = [f"<a href='{_rel(getattr(stage, k), out)}'>{k}: {getattr(stage, k)}</a>"
                 for k in ("tutorial", "notebook") if stage and getattr(stage, k)]
        body.append("<p>" + " · ".join(links) + "</p></section>")
    text = "".join(body)
    page = (f"<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><link rel='icon' href='data:,'><title>llmpath tour report</title>"
            f"<style>{cjk_font_face(text)}{_CSS}</style></head><body>{text}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def merge_earlier(results: list[dict], out: Path, preset: str) -> list[dict]:
    """This run's stages plus those of an earlier tour (same preset) that were not re-run, in path order.

    `llmpath tour --only=3` after a full tour then refreshes stage 3 in the report instead of erasing the rest.
    """
    path = out / "summary.json"
    if not path.exists():
        return results
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return results
    if earlier.get("preset") != preset:
        return results
    done = {r["stage"] for r in results}
    known = {s.stage for s in STAGES}
    kept = [dict(r, earlier=True) for r in earlier.get("stages", []) if r.get("stage") in known - done]
    order = {s.stage: i for i, s in enumerate(STAGES)}
    return sorted(results + kept, key=lambda r: order.get(r["stage"], len(order)))


def write_report(results: list[dict], out: Path, total_s: float, preset: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", {"preset": preset, "total_seconds": round(total_s, 1), "stages": results})
    write_markdown(results, out, total_s)
    return write_html(results, out, total_s)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from llmpath.config import help_text

        print("usage: llmpath tour [--only=1,2] [--preset=small] [--yes] [--fresh]\n\n"
              "Runs every stage in learning-path order and writes runs/tour/report.html and report.md.\n\n"
              + help_text(TourConfig))
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
        print(f"\n=== stage {stage.stage}: {stage.stage_title} ({stage.name}, preset {cfg.preset}) ===", flush=True)
        results.append(run_stage(stage, cfg.preset, cfg.out, cfg.fresh))
        print(f"--- stage {stage.stage} {'PASS' if results[-1]['passed'] else 'FAIL'} "
              f"in {results[-1]['seconds']:.0f} s", flush=True)
    total = time.time() - t0
    tour_dir = Path(cfg.out) / "tour"
    shown = merge_earlier(results, tour_dir, cfg.preset)
    report = write_report(shown, tour_dir, total, cfg.preset)
    print("\n" + summary_table(results))
    if len(shown) > len(results):
        print(f"(the report also shows {len(shown) - len(results)} stage(s) from an earlier tour; --only=0 re-runs all)")
    print(f"\ntotal {total:.0f} s; report: {report} (and report.md)")
    runs_opt = "" if Path(cfg.out) == Path("runs") else f" --runs={cfg.out}"
    print(f"talk to the trained models and look inside them: llmpath serve{runs_opt}  (then open "
          "http://127.0.0.1:8000)")
    return 0 if all(r["passed"] for r in results) else 1
