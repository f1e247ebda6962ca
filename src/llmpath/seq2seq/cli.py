"""`llmpath seq2seq ...`: train, evaluate, compare attention variants, translate, draw alignment maps.

    llmpath seq2seq train --attention=bahdanau            # one model on hsk-pairs zh->en
    llmpath seq2seq compare                               # none vs bahdanau vs dot/general/concat, greedy vs beam
    llmpath seq2seq translate "我想喝水。" --plot align.png
    llmpath seq2seq train --data=dates --preset=tiny      # the synthetic date-conversion task

Run folders: <out>/seq2seq/<preset>-<attention>[-en-zh|-dates]/ with config.json, vocab.json,
ckpt/best.pt, metrics.jsonl and summary.json (test BLEU/chrF, greedy and beam).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from llmpath.common import (comparable_config, count_params, finished_run, log, map_processes, prepare_run, read_json,
                            run_dir, setup_logging, write_json)
from llmpath.config import Command, ConfigError, RunConfig, TrainConfig, build_config, from_dict, opt, sub
from llmpath.seq2seq.data import (DETOKENIZE, PAD, TOKENIZE, Vocab, eval_batches, load_translation, make_batches)
from llmpath.seq2seq.decode import translate_batch
from llmpath.seq2seq.metrics import bleu, bleu_bootstrap, chrf, exact_match
from llmpath.seq2seq.model import ATTENTIONS, Seq2Seq, Seq2SeqConfig, seq2seq_loss, token_nll
from llmpath.train import fit, load_weights

TOPIC = "seq2seq"


@dataclass
class TranslationRun(RunConfig):
    """Options every translation topic shares (stage 3 and the Transformer): the data and how to decode."""

    data: str = opt("hsk-pairs", "hsk-pairs | dates (synthetic) | a .csv/.tsv/.jsonl file of src,tgt pairs")
    direction: Literal["zh-en", "en-zh"] = opt("zh-en", "translation direction")
    beam: int = opt(5, "beam size for the beam-search evaluation and translate (1 = greedy)")
    length_penalty: float = opt(1.0, "GNMT length-penalty alpha for ranking beams (0 = raw log-prob)")
    max_len: int = opt(60, "longest output (also capped at 2 * source length + 10)")


@dataclass
class Seq2SeqRun(TranslationRun):
    attention: Literal["none", "bahdanau", "dot", "general", "concat"] = opt("bahdanau", "decoder attention")
    cell: Literal["gru", "lstm"] = opt("gru", "recurrent cell of encoder and decoder")
    impl: Literal["ours", "torch"] = opt("ours", "ours = stage 2's hand-written cells, torch = torch.nn fast path")
    emb: int = opt(64, "embedding size")
    hidden: int = opt(128, "hidden size per direction (encoder) and of the decoder")
    attn_dim: int = opt(64, "hidden size of the additive scores (bahdanau, concat)")
    dropout: float = opt(0.2, "dropout on embeddings and decoder outputs")
    scale: bool = opt(True, "divide Luong dot/general scores by sqrt(hidden) so the softmax does not saturate")
    teacher_forcing: float = opt(1.0, "probability of feeding the reference token (1 = always)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    workers: int = opt(1, "compare/tour: train this many models at once, one process each (threads=1 each)")
    train: TrainConfig = sub(TrainConfig)


@dataclass
class TranslateRun(Seq2SeqRun):
    text: str = opt("我想喝水。", "sentence to translate")
    plot: str = opt("", "save the alignment map (PNG) here")


# threads=1: the matrices are small and the decoder runs step by step, so extra threads mostly add
# synchronisation (on a busy 2-core machine 2 threads were ~10x slower than 1).
PRESETS = {
    "tiny": {"threads": 1, "emb": 32, "hidden": 48, "attn_dim": 32, "train.max_steps": 30, "train.batch_size": 32,
             "train.eval_interval": 0, "train.warmup_steps": 5, "train.lr": 3e-3, "beam": 3},
    # label smoothing 0.1 and 1500 steps (was: none, 900): chosen on val BLEU, see the tutorial, section 7
    "small": {"threads": 1, "emb": 64, "hidden": 128, "attn_dim": 64, "train.max_steps": 1500, "train.batch_size": 64,
              "train.eval_interval": 300, "train.warmup_steps": 30, "train.lr": 5e-3, "train.weight_decay": 0.01, "dropout": 0.3,
              "label_smoothing": 0.1},
    "base": {"emb": 256, "hidden": 512, "attn_dim": 256, "train.max_steps": 4000, "train.batch_size": 64,
             "train.eval_interval": 500, "train.warmup_steps": 200, "train.lr": 1e-3, "dropout": 0.3},
}


def run_name(cfg: Seq2SeqRun) -> str:
    """<preset>-<attention>[-<cell>][-noscale][-en-zh][-<data>]: every variant gets its own folder."""
    if cfg.name and cfg.name not in (cfg.preset, "default"):
        return cfg.name
    name = f"{cfg.preset or 'default'}-{cfg.attention}"
    if cfg.cell != "gru":
        name += f"-{cfg.cell}"
    if not cfg.scale and cfg.attention in ("dot", "general"):
        name += "-noscale"
    if cfg.direction != "zh-en" and cfg.data != "dates":
        name += f"-{cfg.direction}"
    if cfg.data != "hsk-pairs":
        name += f"-{Path(cfg.data).stem}"
    return name


def _model_config(cfg: Seq2SeqRun, data) -> Seq2SeqConfig:
    return Seq2SeqConfig(src_vocab=len(data.src_vocab), tgt_vocab=len(data.tgt_vocab), attention=cfg.attention,
                         cell=cfg.cell, emb=cfg.emb, hidden=cfg.hidden, attn_dim=cfg.attn_dim, dropout=cfg.dropout,
                         impl=cfg.impl, scale=cfg.scale)


# ------------------------------------------------------------------------------ evaluation

def translate_examples(model, examples, data, device, beam: int = 1, length_penalty: float = 1.0,
                       max_len: int = 60, batch_size: int = 64) -> tuple[list[str], list]:
    """Detokenized hypotheses (and per-sentence attention maps) for a list of Examples, in order."""
    hyps, attns = [], []
    model.eval()
    for b in eval_batches(examples, data.src_vocab, data.tgt_vocab, batch_size):
        out = translate_batch(model, b["src"].to(device), b["src_len"].to(device), beam, length_penalty, max_len)
        for i in range(out.tokens.shape[0]):
            toks = data.tgt_vocab.decode(out.tokens[i].cpu())
            hyps.append(DETOKENIZE[data.tgt_lang](toks))
            n_out = len(toks) + 1  # + <eos>
            attns.append(None if out.attn is None else out.attn[i, :n_out, : int(b["src_len"][i])].cpu())
    return hyps, attns


def attention_stats(model, batches: list[dict], device="cpu") -> dict:
    """Teacher-forced attention diagnostics: `attn_entropy`, the mean entropy of a row over log(source length)
    (1 = uniform, 0 = one-hot: a saturated softmax passes almost no gradient), and `score_std`, the mean spread
    of the scores e_tj over the source positions. Empty for the no-attention decoder."""
    ent, sd, n = 0.0, 0.0, 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        _, w = model(b["src"], b["src_len"], b["tgt_in"])  # (B,T,S)
        if w is None:
            return {}
        L = b["src_len"].float()[:, None, None]  # (B,1,1)
        src = (torch.arange(w.shape[2], device=w.device)[None, None] < L).float()  # (B,1,S) real source
        rows = (b["tgt_out"] != PAD) & (L[:, :, 0] > 1)  # (B,T) real outputs with more than one source token
        logw = w.clamp_min(1e-30).log()  # log-weights = scores minus a per-row constant
        ent += float(((-(w * logw).sum(-1) / L[:, :, 0].log().clamp_min(1e-9))[rows]).sum())
        x = logw.clamp_min(-60) * src
        mean = x.sum(-1, keepdim=True) / L
        std = ((((x - mean) * src) ** 2).sum(-1) / (L[:, :, 0] - 1).clamp_min(1)).sqrt()  # (B,T)
        sd += float(std[rows].sum())
        n += int(rows.sum())
    return {"attn_entropy": ent / max(n, 1), "score_std": sd / max(n, 1)}


def scores(hyps: list[str], examples, data) -> dict:
    refs = [e.tgt_text for e in examples]
    if data.tgt_lang == "dates":
        refs = [DETOKENIZE["dates"](e.tgt_tokens) for e in examples]
        return {"exact_match": 100 * exact_match(hyps, refs), "bleu": bleu(hyps, refs, "en")}
    lower = data.tgt_lang == "en"  # our English vocabulary is lower-cased: score case-insensitively
    return {"bleu": bleu(hyps, refs, data.tgt_lang, lowercase=lower), "chrf": chrf(hyps, refs, data.tgt_lang, lowercase=lower)}


def evaluate_test(model, data, cfg: Seq2SeqRun, device, split: str = "test") -> dict:
    examples = getattr(data, split)
    out = {}
    for mode, beam in (("greedy", 1), ("beam", cfg.beam)):
        hyps, _ = translate_examples(model, examples, data, device, beam, cfg.length_penalty, cfg.max_len)
        out[mode] = scores(hyps, examples, data)
        out[mode]["samples"] = [{"src": e.src_text, "ref": e.tgt_text, "hyp": h} for e, h in zip(examples[:8], hyps[:8])]
    return out


# ------------------------------------------------------------------------------ train


def train(cfg: Seq2SeqRun, fresh: bool = True) -> dict:
    """Train one model, evaluate it on the test split (greedy and beam), write summary.json."""
    cfg.name = run_name(cfg)
    if not fresh and not cfg.train.resume:
        done = finished_run(run_dir(cfg, TOPIC), cfg)
        if done is not None:
            log.info(f"reusing finished run {run_dir(cfg, TOPIC)}")
            return done
    run, device = prepare_run(cfg, TOPIC)
    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    write_json(run / "vocab.json", {"src": data.src_vocab.state_dict(), "tgt": data.tgt_vocab.state_dict(),
                                    "src_lang": data.src_lang, "tgt_lang": data.tgt_lang, "meta": data.meta})
    mcfg = _model_config(cfg, data)
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(mcfg)
    log.info(f"seq2seq {cfg.attention} ({cfg.cell}, impl={cfg.impl}): {count_params(model):,} parameters; "
             f"{data.meta['sizes']} train/val/test pairs ({cfg.data}, {cfg.direction}); run folder {run}")
    batches = make_batches(data.train, data.src_vocab, data.tgt_vocab, cfg.train.batch_size, seed=cfg.seed)
    val = eval_batches(data.val, data.src_vocab, data.tgt_vocab, 128)

    def loss_fn(m, batch):
        return seq2seq_loss(m, batch, cfg.teacher_forcing, cfg.label_smoothing)

    def evaluate(m):
        total, n = token_nll(m, val, device)
        return {"val_loss": total / max(n, 1), **attention_stats(m, val, device)}

    res = fit(model, loss_fn, batches, cfg.train, run_dir=run, evaluate=evaluate, device=device,
              unit="samples", config=cfg)
    load_weights(model, run / "ckpt" / "best.pt", map_location=device)
    test = evaluate_test(model, data, cfg, device)
    summary = {"attention": cfg.attention, "params": count_params(model), "steps": res.step,
               "train_seconds": round(res.seconds, 1), "val_loss": res.best, "test": test,
               "sizes": data.meta["sizes"], "config": comparable_config(cfg)}
    write_json(run / "summary.json", summary)
    g, b = test["greedy"], test["beam"]
    key = "exact_match" if "exact_match" in g else "bleu"
    log.info(f"{cfg.attention}: val loss {res.best:.3f}; test {key} greedy {g[key]:.2f}, beam({cfg.beam}) {b[key]:.2f} "
             f"({res.seconds:.0f}s)")
    return summary


# ------------------------------------------------------------------------------ loading, translate

def load_run(run: Path, device="cpu"):
    """(model, data-like vocab holder, cfg) from a run folder written by `train`."""
    cfg = from_dict(Seq2SeqRun, read_json(run / "config.json"))
    v = read_json(run / "vocab.json")
    src_vocab, tgt_vocab = Vocab.from_state_dict(v["src"]), Vocab.from_state_dict(v["tgt"])
    mcfg = Seq2SeqConfig(src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab), attention=cfg.attention, cell=cfg.cell,
                         emb=cfg.emb, hidden=cfg.hidden, attn_dim=cfg.attn_dim, dropout=cfg.dropout, impl=cfg.impl,
                         scale=cfg.scale)
    model = Seq2Seq(mcfg)
    load_weights(model, run / "ckpt" / "best.pt", map_location=device)
    model.to(device).eval()
    return model, src_vocab, tgt_vocab, v["src_lang"], v["tgt_lang"], cfg


def translate(cfg: TranslateRun) -> str:
    setup_logging()
    cfg.name = run_name(cfg)
    run = run_dir(cfg, TOPIC)
    if not (run / "ckpt" / "best.pt").exists():
        raise FileNotFoundError(f"no trained model in {run}; train it first: llmpath seq2seq train "
                                f"--preset={cfg.preset or 'small'} --attention={cfg.attention}")
    model, sv, tv, src_lang, tgt_lang, _ = load_run(run)
    toks = TOKENIZE[src_lang](cfg.text)
    if not toks:
        raise ConfigError("nothing to translate: the text is empty")
    src = torch.tensor([sv.encode(toks)])
    out = translate_batch(model, src, torch.tensor([len(toks)]), cfg.beam, cfg.length_penalty, cfg.max_len)
    out_toks = tv.decode(out.tokens[0])
    text = DETOKENIZE[tgt_lang](out_toks)
    print(text)
    if cfg.plot:
        if out.attn is None:
            log.info("this model has no attention (--attention=none): no alignment map to draw")
        else:
            from llmpath.plotting import heatmap, save_fig

            m = out.attn[0, : len(out_toks) + 1, : len(toks)].numpy()
            fig = heatmap(m, xlabels=toks, ylabels=out_toks + ["<eos>"], title=f"{cfg.attention}: {cfg.text}",
                          xlabel="source", ylabel="output")
            log.info(f"alignment map: {save_fig(fig, cfg.plot)}")
    return text


# ------------------------------------------------------------------------------ compare, figures

MARGIN = 2.0  # BLEU points every attention model must gain over the no-attention baseline


def _train_worker(cfg: Seq2SeqRun, fresh: bool) -> dict:
    setup_logging()
    return train(cfg, fresh=fresh)


def train_many(cfgs: list[Seq2SeqRun], fresh: bool, workers: int = 1) -> list[dict]:
    """train() each config, with workers > 1 in that many processes (each model is single-threaded)."""
    if workers > 1 and len(cfgs) > 1:
        for c in cfgs:  # two progress bars would overwrite each other
            c.train.progress = False
    return map_processes(functools.partial(_train_worker, fresh=fresh), cfgs, workers)


def compare(cfg: Seq2SeqRun, fresh: bool = False, attentions: tuple[str, ...] = ATTENTIONS) -> dict:
    """Train (or reuse) each decoder at the same budget; results table and the bar."""
    cfgs = []
    for att in attentions:
        c = dataclasses.replace(cfg, attention=att, train=dataclasses.replace(cfg.train))
        c.name = ""
        c.name = run_name(c)
        cfgs.append(c)
    results = dict(zip(attentions, train_many(cfgs, fresh, cfg.workers)))
    # other variants trained earlier at the same settings are reused for the table, never retrained
    for att in ATTENTIONS:
        if att not in results:
            c = dataclasses.replace(cfg, attention=att, train=dataclasses.replace(cfg.train))
            c.name = ""
            c.name = run_name(c)
            done = finished_run(run_dir(c, TOPIC), c)
            if done is not None:
                results[att] = done
    # the bar judges only the models trained (or verified) by this call, not whatever else the folder holds
    out = {"runs": results, "bar": bar_check({a: results[a] for a in attentions})}
    cfg_name = run_name(dataclasses.replace(cfg, attention="none")).replace("-none", "")
    write_json(Path(cfg.out) / TOPIC / f"compare-{cfg_name}.json", out)
    print(results_table(out))
    return out


def bar_check(results: dict) -> dict:
    if "none" not in results:
        return {"passed": False, "why": "no no-attention baseline"}
    base = results["none"]["test"]["greedy"]["bleu"]
    gains = {a: r["test"]["greedy"]["bleu"] - base for a, r in results.items() if a != "none"}
    return {"passed": bool(gains) and all(g >= MARGIN for g in gains.values()), "baseline_bleu": base, "gains": gains,
            "checked": sorted(gains), "margin": MARGIN}


NAMES = {"none": "无注意力（固定上下文）", "bahdanau": "Bahdanau（加性）", "dot": "Luong dot", "general": "Luong general",
         "concat": "Luong concat"}


def results_table(out: dict) -> str:
    runs = out["runs"]
    first = next(iter(runs.values()))
    beam = first["config"]["beam"]
    lines = [f"| 解码器 | 参数量 | 验证损失 | BLEU 贪心 | BLEU 束搜索 (k={beam}) | chrF 贪心 | chrF 束搜索 | 训练秒数 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for att in ATTENTIONS:
        if att not in runs:
            continue
        r = runs[att]
        g, b = r["test"]["greedy"], r["test"]["beam"]
        lines.append(f"| {NAMES[att]} | {r['params']:,} | {r['val_loss']:.3f} | {g['bleu']:.2f} | {b['bleu']:.2f} | "
                     f"{g.get('chrf', float('nan')):.1f} | {b.get('chrf', float('nan')):.1f} | {r['train_seconds']:.0f} |")
    bar = out["bar"]
    if "gains" in bar:
        lines.append("")
        lines.append(f"门槛：每个注意力模型的测试集 BLEU（贪心）比无注意力基线高至少 {bar['margin']} 分 -> "
                     f"{'通过' if bar['passed'] else '未通过'}（检查了：{', '.join(bar['checked'])}）")
    return "\n".join(lines)


def gain_intervals(cfg: Seq2SeqRun, n: int = 1000) -> dict:
    """Paired-bootstrap 95% intervals of each trained attention model's test BLEU gain (greedy) over no-attention.

    With ~200 test sentences one corpus BLEU is a noisy number: this says how much of a gain is luck.
    """
    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    refs = [e.tgt_text for e in data.test]
    hyps = {}
    for att in ATTENTIONS:
        c = dataclasses.replace(cfg, attention=att)
        c.name = ""
        c.name = run_name(c)
        if (run_dir(c, TOPIC) / "ckpt" / "best.pt").exists():
            model, *_ = load_run(run_dir(c, TOPIC))
            hyps[att], _ = translate_examples(model, data.test, data, "cpu", 1, cfg.length_penalty, cfg.max_len)
    if "none" not in hyps:
        raise ConfigError(f"no trained no-attention run for these settings; run: llmpath seq2seq compare --preset={cfg.preset}")
    lower = data.tgt_lang == "en"
    out = {a: bleu_bootstrap(h, hyps["none"], refs, data.tgt_lang, lower, n, cfg.seed) for a, h in hyps.items() if a != "none"}
    lines = ["| 解码器 | BLEU 增益（贪心，对无注意力） | 95% 区间（配对自助法） | 增益 ≤ 0 的比例 |", "|---|---:|---:|---:|"]
    lines += [f"| {NAMES[a]} | {r['gain']:+.2f} | [{r['lo']:+.2f}, {r['hi']:+.2f}] | {r['p_le_0']:.3f} |" for a, r in out.items()]
    print("\n".join(lines))
    return out


def alignment_figures(cfg: Seq2SeqRun, attentions=("bahdanau", "general"), n: int = 4) -> list[Path]:
    """Alignment maps (output x source) of the first n short test sentences, one figure per model."""
    import matplotlib.pyplot as plt

    from llmpath.plotting import heatmap, save_fig, use_cjk

    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    picks = [e for e in data.test if 4 <= len(e.src_tokens) <= 12][:n]
    paths = []
    for att in attentions:
        c = dataclasses.replace(cfg, attention=att)
        c.name = ""
        c.name = run_name(c)
        run = run_dir(c, TOPIC)
        if not (run / "ckpt" / "best.pt").exists():
            continue
        model, *_ = load_run(run)
        hyps, attns = translate_examples(model, picks, data, "cpu", cfg.beam, cfg.length_penalty, cfg.max_len)
        use_cjk()
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.2))
        for ax, e, h, a in zip(axes, picks, hyps, attns):
            ylab = data.tgt_vocab.decode(data.tgt_vocab.encode(TOKENIZE[data.tgt_lang](h))) + ["<eos>"]
            ylab = ylab[: a.shape[0]] + [""] * max(0, a.shape[0] - len(ylab))
            heatmap(a.numpy(), xlabels=e.src_tokens, ylabels=ylab, ax=ax, colorbar=False, cmap="Greys",
                    title=e.tgt_text[:40])
        fig.suptitle(f"{NAMES[att]}：注意力对齐（行 = 译文词，列 = 源语言字）")
        fig.tight_layout()
        paths.append(save_fig(fig, run / "figures" / "alignment.png"))
    return paths


# ------------------------------------------------------------------------------ tour, smoke

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> dict:
    """Stage 3 of `llmpath tour`: no-attention vs Bahdanau, trained here and judged by the bar; Luong runs already
    trained at the same settings (`llmpath seq2seq compare`) are shown in the table but not judged."""
    cfg = build_config(Seq2SeqRun, [f"--preset={preset}", f"--out={out}"], PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)  # the two models side by side, one core each
    res = compare(cfg, fresh=fresh, attentions=("none", "bahdanau"))
    figs = alignment_figures(cfg, attentions=("bahdanau",))
    bah = res["runs"]["bahdanau"]["test"]["greedy"]["bleu"]
    checked = ", ".join(res["bar"].get("checked", []))
    return {"metric": "Bahdanau test BLEU (greedy, zh->en)", "value": bah,
            "bar": f"{checked} beats no-attention by >= {MARGIN} BLEU (greedy) on the test split",
            "passed": bool(res["bar"]["passed"]), "table": results_table(res), "figures": [str(p) for p in figs]}


def smoke() -> str:
    """Doctor check: a tiny attention model decodes with greedy and beam search."""
    from llmpath.seq2seq.decode import beam_search, greedy

    torch.manual_seed(0)
    m = Seq2Seq(Seq2SeqConfig(src_vocab=12, tgt_vocab=12, emb=8, hidden=8, attn_dim=8)).eval()
    src, n = torch.randint(4, 12, (2, 5)), torch.tensor([5, 3])
    if not torch.equal(greedy(m, src, n, 8).tokens, beam_search(m, src, n, 1, 1.0, 8).tokens):
        raise RuntimeError("beam search at beam 1 differs from greedy")
    return "tiny attention seq2seq decodes (greedy == beam 1)"


# ------------------------------------------------------------------------------ commands

def _train_cmd(cfg: Seq2SeqRun) -> int:
    train(cfg)
    return 0


def _eval_cmd(cfg: Seq2SeqRun) -> int:
    cfg.name = run_name(cfg)
    run = run_dir(cfg, TOPIC)
    model, *_ , saved = load_run(run)
    data = load_translation(saved.data, saved.direction, seed=saved.seed)
    cfg2 = dataclasses.replace(saved, beam=cfg.beam, length_penalty=cfg.length_penalty, max_len=cfg.max_len)
    res = evaluate_test(model, data, cfg2, "cpu")
    for mode, r in res.items():
        print(mode, {k: round(v, 2) for k, v in r.items() if k != "samples"})
    return 0


def _figures_cmd(cfg: Seq2SeqRun) -> int:
    setup_logging()
    for p in alignment_figures(cfg, attentions=("bahdanau", "dot", "general", "concat")):
        log.info(f"wrote {p}")
    return 0


COMMANDS = {
    "train": Command(_train_cmd, Seq2SeqRun, "train one encoder-decoder and score it on the test split (BLEU, chrF)",
                     examples=("llmpath seq2seq train --attention=bahdanau", "llmpath seq2seq train --attention=none",
                               "llmpath seq2seq train --attention=general --direction=en-zh",
                               "llmpath seq2seq train --data=dates --preset=tiny --train.max_steps=400",
                               "llmpath seq2seq train --impl=torch --cell=lstm")),
    "eval": Command(_eval_cmd, Seq2SeqRun, "score a trained run on the test split (greedy and beam)",
                    examples=("llmpath seq2seq eval --attention=bahdanau --beam=10 --length-penalty=0.6",)),
    "compare": Command(lambda c: compare(c) and 0, Seq2SeqRun,
                       "no attention vs Bahdanau vs Luong dot/general/concat at the same budget; results table",
                       examples=("llmpath seq2seq compare", "llmpath seq2seq compare --preset=tiny")),
    "translate": Command(lambda c: translate(c) and 0, TranslateRun, "translate a sentence with a trained run",
                         positional=("text",),
                         examples=('llmpath seq2seq translate "我想喝水。"',
                                   'llmpath seq2seq translate "我想喝水。" --plot align.png --attention=general')),
    "significance": Command(lambda c: gain_intervals(c) and 0, Seq2SeqRun,
                            "paired-bootstrap 95% intervals of each attention model's test BLEU gain over no-attention",
                            examples=("llmpath seq2seq significance",)),
    "figures": Command(_figures_cmd, Seq2SeqRun, "alignment maps of test sentences for every trained attention run",
                       examples=("llmpath seq2seq figures",)),
}
