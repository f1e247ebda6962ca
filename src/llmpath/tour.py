"""`llmpath tour`: run every stage's preset in learning-path order and write the report.

Each stage is a function `tour(preset, out, fresh) -> dict` in its topic's cli module returning
    {"metric": str, "value": float, "bar": str, "passed": bool, "table": markdown, "figures": [paths]}
One stage failing does not stop the others; the exit code is non-zero if any failed. The report is
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
from dataclasses import dataclass
from pathlib import Path

from llmpath.common import setup_logging, write_json
from llmpath.config import ConfigError, RunConfig, build_config, opt

# Learning-path order. "teaches" is the paragraph the report shows for the stage.
STAGES: list[dict] = [
    {"num": "1", "topic": "mlp", "title": "MLP 与手写反向传播：文本分类", "run": "llmpath.mlp.cli:tour",
     "tutorial": "docs/tutorials/01_mlp.md", "notebook": "notebooks/01_mlp.ipynb",
     "teaches": "只用 NumPy 手写线性层、激活函数、softmax 交叉熵的前向与反向传播，以及 SGD / 动量 / Adam；"
                "用有限差分和 PyTorch autograd 验证梯度；再在英文推文与中文评论的 TF-IDF 特征上，与 scikit-learn 逻辑回归比较。"},
    {"num": "2", "topic": "rnn", "title": "RNN / LSTM / GRU：字符级莎士比亚语言模型", "run": "llmpath.rnn.cli:tour",
     "tutorial": "docs/tutorials/02_rnn_lstm.md", "notebook": "notebooks/02_rnn_lstm.ipynb",
     "teaches": "用张量运算手写 RNN、LSTM、GRU（与 torch.nn 逐项一致），在莎士比亚全集上训练字符级语言模型，"
                "在相同参数量和步数下与 Kneser-Ney 字符 n-gram 比较；画出梯度消失（100+ 步，对数坐标）、梯度爆炸与裁剪、LSTM 门控热力图，并比较采样温度。"},
    {"num": "3", "topic": "seq2seq", "title": "注意力 seq2seq：中英翻译（Bahdanau 与 Luong）、束搜索、BLEU、对齐图",
     "run": "llmpath.seq2seq.cli:tour",
     "tutorial": "docs/tutorials/03_attention_seq2seq.md", "notebook": "notebooks/03_attention_seq2seq.ipynb",
     "teaches": "双向 GRU 编码器（第 2 阶段手写的单元）+ 解码器：先用一个固定上下文向量（信息瓶颈），再加 Bahdanau 加性注意力；"
                "Luong 的 dot / general / concat 打分在 `llmpath seq2seq compare` 里比较。贪心与束搜索解码，sacrebleu 的 BLEU / chrF，"
                "以及中文源句 × 英文译文的注意力对齐热力图。"},
    {"num": "4", "topic": "transformer", "title": "Transformer 编码器-解码器：从零实现，与 torch.nn.Transformer 一致，中英翻译",
     "run": "llmpath.transformer.cli:tour",
     "tutorial": "docs/tutorials/04_transformer.md", "notebook": "notebooks/04_transformer.ipynb",
     "teaches": "从第 3 章的注意力出发，只用注意力搭出整个模型：缩放点积注意力（手写版与 F.scaled_dot_product_attention 一致）、"
                "多头自注意力与交叉注意力、逐位置前馈、残差 + LayerNorm（Post-LN 与 Pre-LN）、正弦与可学习位置编码、共享权重的输出层、标签平滑与 Noam 学习率；"
                "整个编码器-解码器复制权重后与 torch.nn.Transformer 输出和梯度一致；带 KV 缓存的贪心与束搜索解码（与不缓存逐 token 相同）；"
                "在第 3 章同一份中英数据上与 RNN 注意力模型比较 BLEU，并做消融（去掉位置编码、单头、Pre-LN、去掉标签平滑）。"},
    {"num": "5a", "topic": "tokenizer", "title": "分词：从零实现字节级 BPE，训练快，编码与 tiktoken 一致", "run": "llmpath.tokenizers.cli:tour",
     "tutorial": "docs/tutorials/05a_tokenization.md", "notebook": "notebooks/05a_tokenization.ipynb",
     "teaches": "用正则预切分（GPT-2 / GPT-4 模式）加字节级 BPE 训练词表：朴素版每步重数所有字符对，快速版只更新含被合并对的词并用带惰性失效的堆取最大对，"
                "两者学到完全相同的合并；编码结果与 tiktoken 逐 token 相同，任意 Unicode（中文、emoji）都能无损往返；"
                "在莎士比亚与中文评论上与 Hugging Face tokenizers 比较词表重合度和压缩率（每字符 token 数）。"},
    {"num": "5", "topic": "gpt", "title": "GPT：预训练、采样、KV 缓存、与 Hugging Face 互通、微调", "run": "llmpath.gpt.cli:tour",
     "tutorial": "docs/tutorials/05_gpt.md", "notebook": "notebooks/05_gpt.ipynb",
     "teaches": "只有解码器的 GPT-2 结构（Pre-LN、因果自注意力、GELU、权重共享），在莎士比亚全集上做字符级预训练；"
                "逐 token 采样（温度、top-k、top-p、重复惩罚）与束搜索；KV 缓存让每个新 token 只算一行注意力，输出与不缓存完全相同；"
                "权重与 Hugging Face GPT2LMHeadModel 互相导入导出、logits 一致；最后把预训练模型微调到分类和新领域。"},
]


@dataclass
class TourConfig(RunConfig):
    only: str = opt("", "comma-separated stage numbers or topics to run (default: all)")
    yes: bool = opt(False, "do not ask: run the chosen stages (non-interactive)")
    fresh: bool = opt(False, "retrain even when a finished run exists")


def _select(only: str) -> list[dict]:
    if not only or only.strip() == "0":
        return list(STAGES)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    valid = {s["num"] for s in STAGES} | {s["topic"] for s in STAGES}
    bad = [w for w in wanted if w not in valid]
    if bad:
        raise ConfigError(f"unknown stage '{bad[0]}' in --only; choose from: 0=all, "
                          + ", ".join(f"{s['num']}={s['topic']}" for s in STAGES))
    return [s for s in STAGES if s["num"] in wanted or s["topic"] in wanted]


def _menu() -> str:
    print("llmpath tour: 大模型学习进化之路\n")
    print("  0. 全部 (all)")
    for s in STAGES:
        print(f"  {s['num']}. {s['title']}  [{s['topic']}]")
    return input("\nchoose stages (e.g. 0, or 1,3) [0]: ").strip().replace(" ", ",") or "0"


def run_stage(stage: dict, preset: str, out: str, fresh: bool) -> dict:
    modname, fn = stage["run"].split(":")
    t0 = time.time()
    try:
        res = getattr(importlib.import_module(modname), fn)(preset=preset, out=out, fresh=fresh)
    except Exception as e:  # one stage failing must not stop the tour
        traceback.print_exc()
        res = {"metric": "error", "value": float("nan"), "bar": "", "passed": False,
               "table": f"failed: {type(e).__name__}: {e}", "figures": []}
    res.update(stage=stage["num"], topic=stage["topic"], title=stage["title"], seconds=round(time.time() - t0, 1))
    res["figures"] = [str(p) for p in res.get("figures", [])]
    return res


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_rows(results: list[dict]) -> list[list[str]]:
    return [[r["stage"], r["topic"], r["metric"], _fmt(r["value"]), r["bar"], "PASS" if r["passed"] else "FAIL",
             f"{r['seconds']:.0f}" + (" (earlier run)" if r.get("earlier") else "")] for r in results]


SUMMARY_HEAD = ["stage", "topic", "metric", "value", "bar", "pass", "time (s)"]


def summary_table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(SUMMARY_HEAD) + " |", "|" + "---|" * len(SUMMARY_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report

def write_markdown(results: list[dict], out: Path, total_s: float) -> Path:
    parts = ["# llmpath tour report\n", f"Total wall time: {total_s:.0f} s\n", summary_table(results)]
    for r in results:
        stage = _stage(r["stage"])
        parts += [f"\n## {r['stage']}. {r['title']} (`{r['topic']}`)\n", stage.get("teaches", ""), "",
                  r.get("table", ""), ""]
        parts += [f"![{Path(f).stem}]({_rel(f, out)})" for f in r["figures"]]
        parts += ["", f"Tutorial: `{stage.get('tutorial', '')}` · Notebook: `{stage.get('notebook', '')}`"]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _stage(num: str) -> dict:
    return next((s for s in STAGES if s["num"] == num), {})


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
                    f"(<code>{r['topic']}</code>)</h2><p>{html.escape(stage.get('teaches', ''))}</p>")
        body.append(markdown_to_html(r.get("table", "")))
        body.append("".join(_img(f) for f in r["figures"]))
        links = [f"<a href='{_rel(stage[k], out)}'>{k}: {stage[k]}</a>" for k in ("tutorial", "notebook") if stage.get(k)]
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
    known = {s["num"] for s in STAGES}
    kept = [dict(r, earlier=True) for r in earlier.get("stages", []) if r.get("stage") in known - done]
    order = {s["num"]: i for i, s in enumerate(STAGES)}
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
        print(f"\n=== stage {stage['num']}: {stage['title']} ({stage['topic']}, preset {cfg.preset}) ===", flush=True)
        results.append(run_stage(stage, cfg.preset, cfg.out, cfg.fresh))
        print(f"--- stage {stage['num']} {'PASS' if results[-1]['passed'] else 'FAIL'} "
              f"in {results[-1]['seconds']:.0f} s", flush=True)
    total = time.time() - t0
    tour_dir = Path(cfg.out) / "tour"
    shown = merge_earlier(results, tour_dir, cfg.preset)
    report = write_report(shown, tour_dir, total, cfg.preset)
    print("\n" + summary_table(results))
    if len(shown) > len(results):
        print(f"(the report also shows {len(shown) - len(results)} stage(s) from an earlier tour; --only=0 re-runs all)")
    print(f"\ntotal {total:.0f} s; report: {report} (and report.md)")
    return 0 if all(r["passed"] for r in results) else 1
