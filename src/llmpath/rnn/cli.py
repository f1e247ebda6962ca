"""`llmpath rnn ...`: train, sample, compare RNN/GRU/LSTM with an n-gram, teaching figures, tour.

    llmpath rnn train --cell=lstm                      # char-level Shakespeare, preset small
    llmpath rnn sample --prompt "ROMEO:" --temperature 0.8
    llmpath rnn compare                                # n-gram vs RNN vs GRU vs LSTM, same budget
    llmpath rnn figures                                # vanishing/exploding gradients, LSTM gates
    llmpath rnn train --preset=word                    # word-level variant (5000 words), reports perplexity
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from llmpath.common import count_params, get_device, log, map_processes, markdown_table, set_threads, setup_logging, write_json
from llmpath.config import Command, ConfigError, RunConfig, TrainConfig, build_config, opt, sub
from llmpath.data import CharTokenizer, RandomWindows, load_text, split_text
from llmpath.plotting import bar_table, plt, save_fig, training_curves, use_cjk
from llmpath.rnn.lm import CharRNN, LMConfig, hidden_for_budget, lm_loss, perplexity, stream_nll
from llmpath.rnn.ngram import NGram, bits, max_order
from llmpath.rnn.words import WordTokenizer
from llmpath.runs import comparable_config, load_run, open_folder, reuse, run_path, start_run, variant
from llmpath.tour import StageResult
from llmpath.train import fit, read_metrics

TOPIC = "rnn"
CELL_ORDER = ("rnn", "gru", "lstm")


@dataclass
class RNNRun(RunConfig):
    data: str = opt("shakespeare", "text corpus: a built-in name (llmpath list) or a .txt path")
    level: Literal["char", "word"] = opt("char", "tokens are characters or words")
    vocab_cap: int = opt(5000, "word level: keep this many most frequent words; the rest become <unk>", min=2)
    eval_tokens: int = opt(100_000, "score the first N tokens of the val split (0 = all of it)", min=0)
    # result=False: a cell's run depends on them only through train.lr and model.cell, which are compared
    ngram_max_order: int = opt(8, "compare: try n-gram orders 1..N and keep the best on val", result=False, min=1)
    cells: str = opt("rnn,gru,lstm", "compare: the cells to train, comma-separated", result=False)
    lr_by_cell: str = opt("", "peak lr per cell, e.g. 'rnn=4e-3,lstm=2e-2'; a listed cell ignores --lr ('' = --lr for all)",
                          result=False)
    workers: int = opt(1, "compare/tour: train this many cells at once, one process each (use with --threads=1)",
                       result=False, min=1)
    model: LMConfig = sub(LMConfig)
    train: TrainConfig = sub(TrainConfig)


@dataclass
class SampleRun(RNNRun):
    """The training options too (so presets apply and --cell/--level pick the run), plus sampling ones."""

    run: str = opt("", "run folder to load instead of <out>/rnn/<preset>-<cell> (e.g. runs/rnn/small-lstm)")
    prompt: str = opt("ROMEO:", "text to continue")
    temperature: float = opt(0.8, "softmax temperature: < 1 safer, > 1 wilder", above=0)
    n: int = opt(400, "tokens to generate", min=0)
    top_k: int = opt(0, "sample only among the k most likely tokens (0 = all)", min=0)


_TINY = {"threads": 1, "data": "shakespeare-tiny", "eval_tokens": 4000, "ngram_max_order": 4, "vocab_cap": 500,
         "model.n_embd": 16, "model.n_params": 15_000, "model.block_size": 32,
         "train.batch_size": 8, "train.max_steps": 30, "train.warmup_steps": 5, "train.eval_interval": 0,
         "train.lr": 3e-3, "train.progress": False}
# threads=1: the matrices are small (B=32, H~200) and the cells run step by step, so a second
# thread mostly adds synchronisation (as in the mlp and seq2seq presets)
# lr_by_cell: each cell's peak lr is its best val loss on the grid 2e-3 (rnn only), 4e-3, 1e-2, 2e-2, 4e-2
# at this preset (measured, docs/tutorials/02_rnn_lstm.md appendix A): gated cells want larger steps
_SMALL = {"threads": 1, "model.n_embd": 48, "model.n_params": 250_000, "model.block_size": 128,
          "train.batch_size": 32, "train.max_steps": 500, "train.warmup_steps": 30, "train.lr": 4e-3,
          "lr_by_cell": "rnn=4e-3,gru=1e-2,lstm=4e-2", "train.eval_interval": 250}
PRESETS: dict[str, dict] = {
    "tiny": _TINY,
    "small": _SMALL,  # the tour: 94 s for the cells (two at a time) + n-gram + figures, idle 2-core machine
    # word level: a 5000-word vocabulary makes the embedding and the head (V x H each) most of the
    # model, so it needs a larger budget than the char models for a usable hidden size (~200)
    # (lr 1e-2 for every cell: a middle value of the char-level grid, not tuned for words)
    "word": {**_SMALL, "level": "word", "vocab_cap": 5000, "model.n_embd": 64, "model.n_params": 1_500_000,
             "model.block_size": 64, "ngram_max_order": 5, "train.lr": 1e-2, "lr_by_cell": ""},
    # base: twice the parameters, six times the steps; gru/lstm lrs from the 2000-step grid of tutorial 02
    # appendix B, rnn keeps 4e-3 (2e-3 gave 1.5376 here);
    # measured val RNN 1.5302, GRU 1.4664, LSTM 1.4897 (seed 1: 1.5161, 1.4707, 1.4768) vs KN 6-gram 1.5121:
    # every bar check passes, but `rnn compare --preset=base --workers=2` takes 13 min 20 s on the idle
    # 2-core machine (8.5x the tour's stage)
    "base": {**_SMALL, "model.n_params": 500_000, "train.max_steps": 3000, "train.eval_interval": 500,
             "lr_by_cell": "rnn=4e-3,gru=5e-3,lstm=1e-2"},
}


# ------------------------------------------------------------------------------------ data

def tokenizer_for(cfg: RNNRun, train_text: str):
    if cfg.level == "word":
        return WordTokenizer.train(train_text, cfg.vocab_cap)
    return CharTokenizer.train(train_text, unk=True)  # unk: a val character unseen in train scores as <unk>


def tokenizer_from_state(d: dict):
    return WordTokenizer.from_state_dict(d) if d["kind"] == "word" else CharTokenizer.from_state_dict(d)


def load_ids(cfg: RNNRun):
    """(tokenizer, train ids, val ids) with the val ids cut to cfg.eval_tokens."""
    train_text, val_text, _ = split_text(load_text(cfg.data))
    tok = tokenizer_for(cfg, train_text)
    train_ids = np.asarray(tok.encode(train_text), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text), dtype=np.int64)
    if cfg.eval_tokens > 0:
        val_ids = val_ids[: cfg.eval_tokens]
    return tok, train_ids, val_ids


def cell_lrs(cfg: RNNRun) -> dict[str, float]:
    """--lr-by-cell='rnn=4e-3,gru=1e-2' -> {'rnn': 0.004, 'gru': 0.01}."""
    out = {}
    for part in filter(None, (p.strip() for p in cfg.lr_by_cell.split(","))):
        cell, _, lr = part.partition("=")
        try:
            out[cell.strip()] = float(lr)
        except ValueError:
            raise ConfigError(f"--lr-by-cell: cannot read '{part}'; write cell=lr pairs, e.g. rnn=4e-3,lstm=2e-2") from None
        if cell.strip() not in CELL_ORDER:
            raise ConfigError(f"--lr-by-cell: unknown cell '{cell.strip()}'; choose from: {', '.join(CELL_ORDER)}")
    return out


def for_cell(cfg: RNNRun, cell: str, among: bool = False) -> RNNRun:
    """A copy of cfg that trains `cell`: its run name, its lr from --lr-by-cell, hidden size from the budget.

    among=True: one of several cells of a compare, so an explicit --name=x becomes x-<cell>."""
    lr = cell_lrs(cfg).get(cell, cfg.train.lr)
    c = replace(cfg, model=replace(cfg.model, cell=cell), train=replace(cfg.train, lr=lr))
    c.name = _run_name(c, cell, among)
    return c


def _run_name(cfg: RNNRun | SampleRun, cell: str, among: bool = False) -> str:
    """Default run name <preset>-<cell>[-word]; an explicit --name wins (with -<cell> among several cells)."""
    if cfg.name and cfg.name != cfg.preset:
        return f"{cfg.name}-{cell}" if among else cfg.name
    word = cfg.level == "word" and "word" not in cfg.preset
    return f"{cfg.preset or 'default'}-{cell}" + ("-word" if word else "")


# ---------------------------------------------------------------------------------- train

def train(cfg: RNNRun) -> dict:
    """Train one recurrent LM; writes metrics, checkpoints (with the tokenizer), results and a figure."""
    cfg = for_cell(cfg, cfg.model.cell)
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)  # as asked: vocabulary and hidden sizes are resolved below
    tok, train_ids, val_ids = load_ids(cfg)
    cfg.model.vocab_size = tok.vocab_size
    if not cfg.model.n_hidden:
        H = hidden_for_budget(cfg.model.cell, cfg.model.n_params, tok.vocab_size, cfg.model.n_embd, cfg.model.n_layer)
        if H < 8:
            raise ConfigError(f"--n-params={cfg.model.n_params} leaves a hidden size of {H} for a vocabulary of "
                              f"{tok.vocab_size}; raise --n-params or lower --vocab-cap (or use --preset=word)")
    batches = RandomWindows(train_ids, cfg.model.block_size, cfg.train.batch_size, seed=cfg.seed)  # checks the length
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key)
    model = CharRNN(cfg.model)
    cfg.model.n_hidden = model.n_hidden  # the resolved size goes into config.json and the checkpoint
    n_params = count_params(model)
    log.info(f"{cfg.level}-level {cfg.model.cell} ({cfg.model.impl}): hidden {model.n_hidden}, {n_params:,} parameters, "
             f"lr {cfg.train.lr:g}, "
             f"vocab {tok.vocab_size}, {len(train_ids):,} train / {len(val_ids):,} val tokens -> {run.path}")
    val = torch.as_tensor(val_ids)
    res = fit(model, lm_loss, batches, cfg.train, run=run, unit="tokens",
              evaluate=lambda m: {"val_loss": stream_nll(m, val, device=run.device)})
    val_loss = res.best if res.best is not None else float("nan")
    curves = save_fig(training_curves(read_metrics(run.path / "metrics.jsonl"), f"{cfg.level} {cfg.model.cell}"),
                      run.figures / "curves.png")
    results = {"cell": cfg.model.cell, "impl": cfg.model.impl, "level": cfg.level, "params": n_params,
               "lr": cfg.train.lr, "hidden": model.n_hidden, "steps": res.step, "val_loss": val_loss,
               "val_bpc": bits(val_loss), "val_ppl": perplexity(val_loss), "train_loss": res.train_loss,
               "seconds": round(res.seconds, 1),
               "tokens_per_s": round(res.step * cfg.train.batch_size * cfg.model.block_size / max(res.seconds, 1e-9)),
               "vocab_size": tok.vocab_size, "val_tokens": len(val_ids), "figures": [curves]}
    if cfg.level == "word":
        results["unk_rate_val"] = float((val_ids == 0).mean())
    results = run.finish(results)
    unit = "perplexity" if cfg.level == "word" else "bits/char"
    log.info(f"val loss {val_loss:.4f} nats/token, {unit} "
             f"{results['val_ppl'] if cfg.level == 'word' else results['val_bpc']:.3f}, {res.seconds:.0f} s")
    return results


def _train_worker(cfg: RNNRun) -> dict:
    setup_logging()
    return train(cfg)


# ------------------------------------------------------------------------------- sampling

def sample(cfg: SampleRun) -> str:
    """Print prompt + n sampled tokens from a trained run."""
    setup_logging()
    if cfg.temperature <= 0:
        raise ConfigError(f"--temperature must be > 0, got {cfg.temperature}")
    run = cfg.run or run_path(for_cell(cfg, cfg.model.cell), TOPIC)
    device = get_device(cfg.device)
    hint = (f"llmpath rnn train --cell={cfg.model.cell}" + (" --level=word" if cfg.level == "word" else "")
            + (f" --preset={cfg.preset}" if cfg.preset else ""))
    model, tok, _ = load_run(run, device, hint=hint, topic=TOPIC)
    torch.manual_seed(cfg.seed)
    prompt = torch.tensor([tok.encode(cfg.prompt)], device=device)
    if prompt.shape[1] == 0:
        raise ConfigError("--prompt is empty; give at least one character, e.g. --prompt 'ROMEO:'")
    ids = model.generate(prompt, cfg.n, temperature=cfg.temperature, top_k=cfg.top_k)
    text = cfg.prompt + tok.decode(ids[0].tolist())
    print(text)
    return text


# ------------------------------------------------------------------------------- compare

def ngram_scores(train_ids: np.ndarray, val_ids: np.ndarray, V: int, orders: int) -> dict[int, dict]:
    """Kneser-Ney n-gram val loss and table size for orders 1..orders (capped where keys overflow int64)."""
    out = {}
    if orders > max_order(V):
        log.info(f"n-gram orders above {max_order(V)} do not fit int64 keys for a vocabulary of {V}; skipped")
    for n in range(1, min(orders, max_order(V)) + 1):
        t0 = time.time()
        lm = NGram(n).fit(train_ids, V)
        nll = lm.nll(val_ids)
        out[n] = {"val_loss": nll, "counts": sum(len(t.keys) for t in lm.tables), "seconds": round(time.time() - t0, 1)}
    return out


def compare(cfg: RNNRun) -> dict:
    """Train each cell at the same parameter budget and steps; score the n-gram on the same val tokens."""
    setup_logging()
    set_threads(cfg.threads)  # train() sets it too, but reused runs skip train(), and figures() runs after this
    cells = [c.strip() for c in cfg.cells.split(",") if c.strip()]
    bad = [c for c in cells if c not in CELL_ORDER]
    if bad:
        raise ConfigError(f"unknown cell '{bad[0]}' in --cells; choose from: {', '.join(CELL_ORDER)}")
    rows, todo = {}, []
    for cell in cells:
        c = for_cell(replace(cfg, model=replace(cfg.model, n_hidden=0)), cell, among=True)  # hidden size from the budget
        done = reuse(c, TOPIC)
        if done:
            rows[cell] = done
        else:
            todo.append(c)
    if cfg.workers > 1 and len(todo) > 1:
        for c in todo:  # two progress bars would overwrite each other
            c.train.progress = False
    for c, summary in zip(todo, map_processes(_train_worker, todo, cfg.workers)):
        rows[c.model.cell] = summary
    rows = {cell: rows[cell] for cell in cells}
    tok, train_ids, val_ids = load_ids(cfg)
    log.info(f"n-gram orders 1..{cfg.ngram_max_order} on {len(train_ids):,} {cfg.level}s")
    ng = ngram_scores(train_ids, val_ids, tok.vocab_size, cfg.ngram_max_order)
    best_n = min(ng, key=lambda n: ng[n]["val_loss"])
    budget = max(r["params"] for r in rows.values())
    matched = [n for n in ng if ng[n]["counts"] <= budget]
    matched_n = max(matched) if matched else 1
    result = {"preset": cfg.preset, "level": cfg.level, "data": cfg.data, "val_tokens": int(len(val_ids)),
              "cells": rows, "ngram": {str(n): v for n, v in ng.items()}, "ngram_best_order": best_n,
              "ngram_matched_order": matched_n}
    result["bar"] = bar_check(result)
    out = open_folder(variant(cfg, "compare"), TOPIC)  # <preset>-compare/
    table = results_table(result)
    result["table"] = table
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    names = [f"{n}-gram KN" for n in (matched_n, best_n)] + list(rows)
    values = [ng[matched_n]["val_loss"], ng[best_n]["val_loss"]] + [r["val_loss"] for r in rows.values()]
    per = "词" if cfg.level == "word" else "字符"
    save_fig(bar_table(names, values, title=f"验证损失，{cfg.preset} 预设（越低越好）", ylabel=f"nats/{per}"),
             out / "figures" / "compare.png")
    refs = {f"{n}-gram KN（{tag}）": ng[n]["val_loss"] for n, tag in ngram_tags(result).items()}
    save_fig(_val_curves(cfg, cells, refs), out / "figures" / "val_curves.png")
    write_json(out / "results.json", result)
    print(table)
    return result


def bar_check(result: dict) -> dict:
    """The bar: LSTM and GRU beat the vanilla RNN and the Kneser-Ney n-gram of matched size.

    The best n-gram of any order is reported beside it (`best_order`), not judged: at the small preset
    it stays ahead; the base preset's gated cells pass it too (tutorial 02, appendix B).
    """
    cells, ng = result["cells"], result["ngram"]
    if not all(c in cells for c in CELL_ORDER):
        return {"passed": False, "reason": "needs all three cells"}
    rnn = cells["rnn"]["val_loss"]
    matched = ng[str(result["ngram_matched_order"])]["val_loss"]
    best = ng[str(result["ngram_best_order"])]["val_loss"]
    checks = {f"{c} < rnn": cells[c]["val_loss"] < rnn for c in ("lstm", "gru")}
    checks |= {f"{c} < {result['ngram_matched_order']}-gram (matched size)": cells[c]["val_loss"] < matched for c in ("lstm", "gru")}
    best_order = {f"{c} < {result['ngram_best_order']}-gram (best order)": cells[c]["val_loss"] < best for c in ("lstm", "gru")}
    return {"checks": checks, "passed": all(checks.values()), "best_order": best_order}


TAGS = {"matched size": "同等规模", "best on val": "验证集上最好的阶"}  # how the tables and figures name them


def ngram_tags(result: dict) -> dict[int, str]:
    """The n-gram orders a compare result reports, each with why: {4: '同等规模', 6: '验证集上最好的阶'}."""
    matched, best = result["ngram_matched_order"], result["ngram_best_order"]
    return {n: "、".join(TAGS[t] for t, k in (("matched size", matched), ("best on val", best)) if k == n)
            for n in sorted({matched, best})}


def _check_label(check: str) -> str:
    """'lstm < 4-gram (matched size)' -> 'LSTM < 4-gram（同等规模）' (the keys of bar_check stay English)."""
    for cell in CELL_ORDER:
        check = check.replace(f"{cell} <", f"{cell.upper()} <").replace(f"< {cell}", f"< {cell.upper()}")
    return check.replace(" (matched size)", "（同等规模）").replace(" (best order)", "（验证集上最好的阶）")


def results_table(result: dict) -> str:
    """Markdown table: model, parameters (or n-gram counts), steps, val loss, bits per char; then the bar."""
    level = result["level"]
    unit, per = ("困惑度", "词") if level == "word" else ("bits/字符", "字符")
    metric = (lambda x: f"{perplexity(x):.1f}") if level == "word" else (lambda x: f"{bits(x):.3f}")
    ng = result["ngram"]
    rows = [[f"{n}-gram Kneser-Ney（{tag}）", "numpy", f"{ng[str(n)]['counts']:,} 个计数", "-", "-", ng[str(n)]["seconds"],
             f"{ng[str(n)]['val_loss']:.4f}", metric(ng[str(n)]["val_loss"])] for n, tag in ngram_tags(result).items()]
    rows += [[f"{cell.upper()}（隐藏维度 {r['hidden']}）", r["impl"], f"{r['params']:,} 个参数", f"{r.get('lr', float('nan')):g}",
              r["steps"], r["seconds"], f"{r['val_loss']:.4f}", metric(r["val_loss"])] for cell, r in result["cells"].items()]
    table = markdown_table(["模型", "实现", "规模", "峰值学习率", "步数", "训练秒数", f"验证损失 (nats/{per})", unit],
                           rows, "lllrrrrr")
    bar = result.get("bar", {})
    if bar.get("checks"):
        table += "\n\n达标线：" + "，".join(f"{_check_label(k)} {'PASS' if v else 'FAIL'}" for k, v in bar["checks"].items())
    if bar.get("best_order"):
        table += "\n\n达标线之外的对照：" + "，".join(f"{_check_label(k)} {'是' if v else '否'}"
                                                for k, v in bar["best_order"].items())
    return table


def _val_curves(cfg: RNNRun, cells: list[str], refs: dict[str, float] | None = None):
    """Left: train and val loss of each cell against the step. Right: val only, zoomed, with the
    `refs` ({label: val loss}, the n-grams) as horizontal lines, so a crossing is easy to see."""
    use_cjk()
    per = "词" if cfg.level == "word" else "字符"
    fig, (ax, az) = plt.subplots(1, 2, figsize=(11, 4.6))
    vals = []
    for cell in cells:
        rows = read_metrics(run_path(for_cell(cfg, cell, among=True), TOPIC) / "metrics.jsonl")
        tr = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
        va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if tr:
            line, = ax.plot(*zip(*tr), alpha=0.6, label=f"{cell.upper()} 训练")
            if va:
                ax.plot(*zip(*va), "o--", color=line.get_color(), label=f"{cell.upper()} 验证")
                az.plot(*zip(*va), "o-", color=line.get_color(), label=f"{cell.upper()}（{va[-1][1]:.4f}）")
                vals += [v for _, v in va]
    for (label, value), style in zip((refs or {}).items(), (":", "-.")):
        az.axhline(value, color="0.35", ls=style, lw=1.2, label=f"{label}（{value:.4f}）")
        vals.append(value)
    ax.set(xlabel="步数", ylabel=f"损失 (nats/{per})", title=f"{' / '.join(c.upper() for c in cells)}：同参数量、同步数")
    az.set(xlabel="步数", ylabel=f"验证损失 (nats/{per})", title="验证损失与 n-gram 基线")
    if vals:
        pad = 0.05 * (max(vals) - min(vals) or 1.0)
        az.set_ylim(min(vals) - pad, max(vals) + pad)
    for a in (ax, az):
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    az.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: never on a curve
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------- figures

def figures(cfg: RNNRun) -> dict:
    """The teaching figures, from the compare runs (trained first when missing)."""
    from llmpath.rnn import experiments as ex

    result = compare(cfg)
    out = run_path(variant(cfg, "compare"), TOPIC) / "figures"
    torch.manual_seed(cfg.seed)
    trained = {cell: load_run(run_path(for_cell(cfg, cell, among=True), TOPIC)).model for cell in CELL_ORDER}
    tok, train_ids, val_ids = load_ids(cfg)
    fresh_models = {cell: CharRNN(replace(m.cfg, n_hidden=m.n_hidden)).eval() for cell, m in trained.items()}
    # 16 val windows of 151 tokens: the loss sits at the end, gradients flow back 150 steps
    T = 150 if len(val_ids) > 2000 else 40
    starts = np.random.default_rng(cfg.seed).integers(0, len(val_ids) - T - 1, 16)
    windows = torch.as_tensor(np.stack([val_ids[s:s + T + 1] for s in starts]))
    fig, ratios = ex.vanishing_gradients({"刚初始化": fresh_models, f"训练后（{cfg.preset} 预设）": trained}, windows)
    paths = [save_fig(fig, out / "vanishing_gradients.png")]
    small = cfg.preset == "tiny"
    fig, exploding = ex.exploding_gradients(train_ids, tok.vocab_size, steps=30 if small else 150,
                                            block_size=30 if small else 100, n_hidden=32 if small else 128)
    paths.append(save_fig(fig, out / "exploding_gradients.png"))
    val_text = split_text(load_text(cfg.data))[1]
    a = val_text.find("\n\n", 2000) + 2  # start at a speech: a speaker line, then verse
    line = val_text[a:a + 90] if a > 1 else val_text[:90]
    lstm = trained["lstm"]
    paths.append(save_fig(ex.gate_heatmap(lstm, line, tok.encode(line)), out / "lstm_gates.png"))
    passage = val_text[a:a + 600] if a > 1 else val_text[:600]
    fig, unit, corr = ex.unit_over_text(lstm, passage, tok.encode(passage))
    paths.append(save_fig(fig, out / "lstm_unit.png"))
    samples = ex.temperature_samples(lstm, tok.encode, tok.decode, "ROMEO:", n=60 if small else 300, seed=cfg.seed)
    md = "\n\n".join(f"T = {t}:\n\n```text\n{s}\n```" for t, s in samples.items())
    (out.parent / "samples.md").write_text(md + "\n", encoding="utf-8")
    info = {"grad_ratio_100_steps": ratios, "exploding": exploding, "unit": unit, "unit_corr": corr,
            "samples": {str(k): v for k, v in samples.items()}}
    write_json(out.parent / "figures.json", info)
    log.info(f"figures in {out}")
    return {"result": result, "figures": paths, **info}


# ---------------------------------------------------------------------------- tour, smoke

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 2 of `llmpath tour`: compare the cells and the n-gram, draw the figures, sample."""
    cfg = build_config(RNNRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)  # two cells side by side, one core each
    res = figures(cfg)
    result = res["result"]
    lstm = result["cells"]["lstm"]["val_loss"]
    table = results_table(result) + "\n\nsamples (LSTM, prompt ROMEO:):\n\n" + "\n\n".join(
        f"T = {t}:\n\n```text\n{s[:300]}\n```" for t, s in res["samples"].items())
    return StageResult("LSTM val loss (nats/char)", lstm,
                       "LSTM and GRU val loss < vanilla RNN and < the Kneser-Ney n-gram of matched size",
                       bool(result["bar"]["passed"]), table, res["figures"])


def smoke() -> str:
    """Doctor check: a tiny LSTM LM forward pass with both implementations."""
    x = torch.randint(0, 10, (2, 5))
    outs = []
    for impl in ("ours", "torch"):
        torch.manual_seed(0)
        outs.append(CharRNN(LMConfig(cell="lstm", vocab_size=10, n_embd=4, n_hidden=8, impl=impl))(x)[0])
    if not torch.allclose(outs[0], outs[1], atol=1e-5):
        raise RuntimeError("hand-written LSTM and torch.nn.LSTM disagree")
    return "tiny LSTM forward ok (ours == torch.nn)"


# ------------------------------------------------------------------------------ commands

COMMANDS = {
    "train": Command(train, RNNRun, "train one recurrent language model (char or word level)",
                     examples=("llmpath rnn train --cell=lstm", "llmpath rnn train --cell=gru --impl=ours --preset=tiny",
                               "llmpath rnn train --preset=word", "llmpath rnn compare --preset=word --cells=lstm")),
    "sample": Command(sample, SampleRun, "generate text from a trained run", positional=("prompt",),
                      examples=('llmpath rnn sample --prompt "ROMEO:" --temperature 0.8',
                                'llmpath rnn sample "JULIET:" --cell=gru --n=200')),
    "compare": Command(compare, RNNRun, "n-gram vs RNN vs GRU vs LSTM at the same budget; results table",
                       examples=("llmpath rnn compare", "llmpath rnn compare --preset=tiny",
                                 "llmpath rnn compare --preset=base --workers=2")),
    "figures": Command(figures, RNNRun, "vanishing/exploding gradients, LSTM gates, temperature samples",
                       examples=("llmpath rnn figures",)),
}
