"""`llmpath seq2seq ...`: train, evaluate, compare attention variants, translate, draw alignment maps.

    llmpath seq2seq train --attention=bahdanau            # one model on hsk-pairs zh->en
    llmpath seq2seq compare                               # none vs bahdanau vs dot/general/concat, greedy vs beam
    llmpath seq2seq translate "我想喝水。" --plot align.png
    llmpath seq2seq train --data=dates --preset=tiny      # the synthetic date-conversion task

Run folders (llmpath.runs): <out>/seq2seq/<preset>-<attention>[-en-zh|-dates]/ with config.json,
ckpt/best.pt (which holds the vocabularies too), metrics.jsonl and results.json (test BLEU/chrF, greedy
and beam); `compare` writes its table to <out>/seq2seq/<preset>-compare/results.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from llmpath.common import count_params, log, map_processes, markdown_table, setup_logging, write_json
from llmpath.config import Command, ConfigError, TrainConfig, build_config, opt, sub
from llmpath.runs import comparable_config, finished, load_run, open_folder, reuse, run_path, start_run, variant
from llmpath.seq2seq.data import PAD, TOKENIZE, eval_batches, load_translation, make_batches
from llmpath.seq2seq.decode import translate_batch
from llmpath.seq2seq.metrics import bleu_bootstrap
from llmpath.seq2seq.model import ATTENTIONS, Seq2Seq, Seq2SeqConfig, seq2seq_loss
from llmpath.seq2seq.translation import (TranslationRun, TranslationVocab, eval_command, evaluate_split, name_suffix,
                                         token_nll, translate_command, translate_examples)
from llmpath.train import fit
from llmpath.tour import StageResult

TOPIC = "seq2seq"


@dataclass
class Seq2SeqRun(TranslationRun):
    model: Seq2SeqConfig = opt(Seq2SeqConfig(emb=64, hidden=128, attn_dim=64), "the encoder-decoder (llmpath.seq2seq.model)")
    teacher_forcing: float = opt(1.0, "probability of feeding the reference token (1 = always)", min=0, max=1)
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy", min=0, below=1)
    workers: int = opt(1, "compare/tour: train this many models at once, one process each (threads=1 each)", result=False, min=1)
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
    # label smoothing 0.1 and 1500 steps (was: none, 900): chosen on val BLEU, see the tutorial, appendix A
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
    m = cfg.model
    name = f"{cfg.preset or 'default'}-{m.attention}"
    if m.cell != "gru":
        name += f"-{m.cell}"
    if not m.scale and m.attention in ("dot", "general"):
        name += "-noscale"
    return name + name_suffix(cfg)


def named(cfg: Seq2SeqRun, **model) -> Seq2SeqRun:
    """A copy of cfg with model options changed (e.g. attention="dot"), in its default run folder."""
    c = variant(cfg, "", **{f"model.{k}": v for k, v in model.items()})
    c.name = ""
    c.name = run_name(c)
    return c


def decode(model, src, src_len, beam, length_penalty, max_len):
    return translate_batch(model, src, src_len, beam, length_penalty, max_len)


def logits(model, b):
    return model(b["src"], b["src_len"], b["tgt_in"])[0]


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


# ------------------------------------------------------------------------------ train

def train(cfg: Seq2SeqRun) -> dict:
    """Train one model, evaluate it on the test split (greedy and beam), write results.json."""
    cfg.name = run_name(cfg)
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)  # as asked: the vocabulary sizes below come from the data
    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    cfg.model.src_vocab, cfg.model.tgt_vocab = len(data.src_vocab), len(data.tgt_vocab)
    run = start_run(cfg, TOPIC, tokenizer=TranslationVocab.of(data), key=key)
    model = Seq2Seq(cfg.model)
    m = cfg.model
    log.info(f"seq2seq {m.attention} ({m.cell}, impl={m.impl}): {count_params(model):,} parameters; "
             f"{data.meta['sizes']} train/val/test pairs ({cfg.data}, {cfg.direction}); run folder {run.path}")
    batches = make_batches(data.train, data.src_vocab, data.tgt_vocab, cfg.train.batch_size, seed=cfg.seed)
    val = eval_batches(data.val, data.src_vocab, data.tgt_vocab, 128)

    def loss_fn(model, batch):
        return seq2seq_loss(model, batch, cfg.teacher_forcing, cfg.label_smoothing)

    def evaluate(model):
        return {"val_loss": token_nll(model, logits, val, run.device), **attention_stats(model, val, run.device)}

    res = fit(model, loss_fn, batches, cfg.train, run=run, evaluate=evaluate, restore_best=True)
    test = evaluate_split(model, decode, data, cfg, run.device)
    results = run.finish({"attention": m.attention, "params": count_params(model), "steps": res.step,
                          "train_seconds": round(res.seconds, 1), "val_loss": res.best, "test": test,
                          "sizes": data.meta["sizes"]})
    g, b = test["greedy"], test["beam"]
    metric = "exact_match" if "exact_match" in g else "bleu"
    log.info(f"{m.attention}: val loss {res.best:.3f}; test {metric} greedy {g[metric]:.2f}, beam({cfg.beam}) "
             f"{b[metric]:.2f} ({res.seconds:.0f}s)")
    return results


# ------------------------------------------------------------------------------ translate

def plot_alignment(model, vocab, out, src_toks, out_toks, cfg) -> str:
    """The alignment map of one translation (output x source) at cfg.plot."""
    if out.attn is None:
        log.info("this model has no attention (--attention=none): no alignment map to draw")
        return ""
    from llmpath.plotting import heatmap, save_fig

    weights = out.attn[0, : len(out_toks) + 1, : len(src_toks)].numpy()
    fig = heatmap(weights, xlabels=src_toks, ylabels=out_toks + ["<eos>"], title=f"{cfg.model.attention}: {cfg.text}",
                  xlabel="源语言", ylabel="译文")
    return str(save_fig(fig, cfg.plot))


def translate(cfg: TranslateRun) -> str:
    cfg.name = run_name(cfg)
    return translate_command(cfg, TOPIC, decode, plot_alignment)


def eval_run(cfg: Seq2SeqRun) -> dict:
    """Score a trained run on the test split (greedy and beam) with this command's decoding options."""
    cfg.name = run_name(cfg)
    return eval_command(cfg, TOPIC, decode, lambda saved: load_translation(saved.data, saved.direction, seed=saved.seed))


# ------------------------------------------------------------------------------ compare, figures

MARGIN = 2.0  # BLEU points every attention model must gain over the no-attention baseline


def _train_worker(cfg: Seq2SeqRun) -> dict:
    setup_logging()
    return train(cfg)


def train_many(cfgs: list[Seq2SeqRun], workers: int = 1) -> list[dict]:
    """train() each config, with workers > 1 in that many processes (each model is single-threaded)."""
    if workers > 1 and len(cfgs) > 1:
        for c in cfgs:  # two progress bars would overwrite each other
            c.train.progress = False
    return map_processes(_train_worker, cfgs, workers)


def compare(cfg: Seq2SeqRun, attentions: tuple[str, ...] = ATTENTIONS) -> dict:
    """Train (or reuse) each decoder at the same budget; the table and the bar go to <preset>-compare/."""
    results = dict(zip(attentions, train_many([named(cfg, attention=a) for a in attentions], cfg.workers)))
    # other variants trained earlier at the same settings are reused for the table, never retrained
    for att in ATTENTIONS:
        if att not in results and (done := finished(named(cfg, attention=att), TOPIC)) is not None:
            results[att] = done
    # the bar judges only the models trained (or verified) by this call, not whatever else the folder holds
    out = {"runs": results, "bar": bar_check({a: results[a] for a in attentions})}
    out["table"] = results_table(out)
    table_run = named(cfg, attention="none")
    table_run.name = table_run.name.replace("-none", "-compare", 1)  # small-compare, small-compare-en-zh, ...
    write_json(open_folder(table_run, TOPIC) / "results.json", out)
    print(out["table"])
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
    beam = next(iter(runs.values()))["config"]["beam"]
    rows = []
    for att in ATTENTIONS:
        if att in runs:
            r = runs[att]
            g, b = r["test"]["greedy"], r["test"]["beam"]
            rows.append([NAMES[att], f"{r['params']:,}", f"{r['val_loss']:.3f}", f"{g['bleu']:.2f}", f"{b['bleu']:.2f}",
                         f"{g.get('chrf', float('nan')):.1f}", f"{b.get('chrf', float('nan')):.1f}",
                         f"{r['train_seconds']:.0f}"])
    table = markdown_table(["解码器", "参数量", "验证损失", "BLEU 贪心", f"BLEU 束搜索 (k={beam})", "chrF 贪心", "chrF 束搜索",
                            "训练秒数"], rows)
    bar = out["bar"]
    if "gains" in bar:
        table += (f"\n\n门槛：每个注意力模型的测试集 BLEU（贪心）比无注意力基线高至少 {bar['margin']} 分 -> "
                  f"{'通过' if bar['passed'] else '未通过'}（检查了：{', '.join(bar['checked'])}）")
    return table


def gain_intervals(cfg: Seq2SeqRun, n: int = 1000) -> dict:
    """Paired-bootstrap 95% intervals of each trained attention model's test BLEU gain (greedy) over no-attention.

    With ~200 test sentences one corpus BLEU is a noisy number: this says how much of a gain is luck.
    """
    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    refs = [e.tgt_text for e in data.test]
    hyps = {}
    for att in ATTENTIONS:
        run = run_path(named(cfg, attention=att), TOPIC)
        if (run / "ckpt" / "best.pt").exists():
            model = load_run(run).model
            hyps[att], _ = translate_examples(model, decode, data.test, data, "cpu", 1, cfg.length_penalty, cfg.max_len)
    if "none" not in hyps:
        raise ConfigError(f"no trained no-attention run for these settings; run: llmpath seq2seq compare --preset={cfg.preset}")
    lower = data.tgt_lang == "en"
    out = {a: bleu_bootstrap(h, hyps["none"], refs, data.tgt_lang, lower, n, cfg.seed) for a, h in hyps.items() if a != "none"}
    print(markdown_table(["解码器", "BLEU 增益（贪心，对无注意力）", "95% 区间（配对自助法）", "增益 ≤ 0 的比例"],
                         [[NAMES[a], f"{r['gain']:+.2f}", f"[{r['lo']:+.2f}, {r['hi']:+.2f}]", f"{r['p_le_0']:.3f}"]
                          for a, r in out.items()]))
    return out


def alignment_figures(cfg: Seq2SeqRun, attentions=("bahdanau", "general"), n: int = 4) -> list:
    """Alignment maps (output x source) of the first n short test sentences, one figure per model."""
    import matplotlib.pyplot as plt

    from llmpath.plotting import heatmap, save_fig, use_cjk

    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    picks = [e for e in data.test if 4 <= len(e.src_tokens) <= 12][:n]
    paths = []
    for att in attentions:
        run = run_path(named(cfg, attention=att), TOPIC)
        if not (run / "ckpt" / "best.pt").exists():
            continue
        model = load_run(run).model
        hyps, attns = translate_examples(model, decode, picks, data, "cpu", cfg.beam, cfg.length_penalty, cfg.max_len)
        use_cjk()
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks) + 0.8, 4.2), squeeze=False)
        for ax, e, h, a in zip(axes[0], picks, hyps, attns):
            ylab = data.tgt_vocab.decode(data.tgt_vocab.encode(TOKENIZE[data.tgt_lang](h))) + ["<eos>"]
            ylab = ylab[: a.shape[0]] + [""] * max(0, a.shape[0] - len(ylab))
            heatmap(a.numpy(), xlabels=e.src_tokens, ylabels=ylab, ax=ax, colorbar=False, cmap="Greys",
                    title=e.tgt_text[:40])
            ax.images[0].set_clim(0, 1)  # one scale for every panel and every model, so shades compare
        fig.suptitle(f"{NAMES[att]}：注意力对齐（行 = 译文词，列 = 源语言字）")
        fig.tight_layout(rect=(0, 0, 1 - 0.7 / fig.get_figwidth(), 1))
        bar = fig.add_axes((1 - 0.55 / fig.get_figwidth(), 0.2, 0.15 / fig.get_figwidth(), 0.6))
        fig.colorbar(axes[0][0].images[0], cax=bar, label="注意力权重 α")
        paths.append(save_fig(fig, run / "figures" / "alignment.png"))
    return paths


def figures(cfg: Seq2SeqRun) -> list:
    """Alignment maps of test sentences for every trained attention run."""
    setup_logging()
    paths = alignment_figures(cfg, attentions=("bahdanau", "dot", "general", "concat"))
    for p in paths:
        log.info(f"wrote {p}")
    return paths


# ------------------------------------------------------------------------------ tour, smoke

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 3 of `llmpath tour`: no-attention vs Bahdanau, trained here and judged by the bar; Luong runs already
    trained at the same settings (`llmpath seq2seq compare`) are shown in the table but not judged."""
    cfg = build_config(Seq2SeqRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)  # the two models side by side, one core each
    res = compare(cfg, attentions=("none", "bahdanau"))
    figs = alignment_figures(cfg, attentions=("bahdanau",))
    checked = ", ".join(res["bar"].get("checked", []))
    return StageResult("Bahdanau test BLEU (greedy, zh->en)", res["runs"]["bahdanau"]["test"]["greedy"]["bleu"],
                       f"{checked} beats no-attention by >= {MARGIN} BLEU (greedy) on the test split",
                       bool(res["bar"]["passed"]), res["table"], figs)


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

COMMANDS = {
    "train": Command(train, Seq2SeqRun, "train one encoder-decoder and score it on the test split (BLEU, chrF)",
                     examples=("llmpath seq2seq train --attention=bahdanau", "llmpath seq2seq train --attention=none",
                               "llmpath seq2seq train --attention=general --direction=en-zh",
                               "llmpath seq2seq train --data=dates --preset=tiny --train.max_steps=400",
                               "llmpath seq2seq train --impl=torch --cell=lstm")),
    "eval": Command(eval_run, Seq2SeqRun, "score a trained run on the test split (greedy and beam)",
                    examples=("llmpath seq2seq eval --attention=bahdanau --beam=10 --length-penalty=0.6",)),
    "compare": Command(compare, Seq2SeqRun,
                       "no attention vs Bahdanau vs Luong dot/general/concat at the same budget; results table",
                       examples=("llmpath seq2seq compare", "llmpath seq2seq compare --preset=tiny")),
    "translate": Command(translate, TranslateRun, "translate a sentence with a trained run", positional=("text",),
                         examples=('llmpath seq2seq translate "我想喝水。"',
                                   'llmpath seq2seq translate "我想喝水。" --plot align.png --attention=general')),
    "significance": Command(gain_intervals, Seq2SeqRun,
                            "paired-bootstrap 95% intervals of each attention model's test BLEU gain over no-attention",
                            examples=("llmpath seq2seq significance",)),
    "figures": Command(figures, Seq2SeqRun, "alignment maps of test sentences for every trained attention run",
                       examples=("llmpath seq2seq figures",)),
}
