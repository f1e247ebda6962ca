"""`llmpath transformer ...`: train the encoder-decoder on stage 3's translation task, evaluate, translate, ablate.

    llmpath transformer train                        # hsk-pairs zh->en, the stage-3 split and tokenization
    llmpath transformer translate "我想喝水。"
    llmpath transformer ablate                       # no positions, 1 head, pre-LN, no label smoothing
    llmpath transformer curve                        # BLEU against the fraction of training data used
    llmpath transformer figures                      # positional encoding, attention grids, structure

Run folders: <out>/transformer/<name>/ with config.json, vocab.json, ckpt/best.pt, metrics.jsonl,
summary.json (val and test BLEU/chrF) and figures/.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from llmpath.common import (comparable_config, count_params, finished_run, log, prepare_run, read_json, run_dir,
                            setup_logging, write_json)
from llmpath.config import Command, ConfigError, TrainConfig, build_config, from_dict, opt, sub
from llmpath.seq2seq.cli import TranslationRun, scores  # scores: BLEU / chrF exactly as stage 3 scores them
from llmpath.seq2seq.data import DETOKENIZE, TOKENIZE, Vocab, eval_batches, load_translation, make_batches
from llmpath.train import fit, load_weights
from llmpath.transformer.decode import translate_batch
from llmpath.transformer.model import Transformer, TransformerConfig, label_smoothed_cross_entropy, transformer_loss

TOPIC = "transformer"


@dataclass
class TransformerRun(TranslationRun):
    n_layer: int = opt(2, "encoder layers (and as many decoder layers)")
    n_head: int = opt(4, "attention heads")
    n_embd: int = opt(128, "model width d_model")
    n_ff: int = opt(256, "feed-forward inner width d_ff")
    dropout: float = opt(0.3, "dropout on embeddings, attention weights and residual branches")
    norm: Literal["post", "pre"] = opt("post", "LayerNorm after the residual sum (paper) or before the sub-layer")
    pos: Literal["sinusoidal", "learned", "none"] = opt("sinusoidal", "positional encoding")
    tie_weights: bool = opt(True, "output head shares the target embedding")
    sdpa: bool = opt(False, "attention through F.scaled_dot_product_attention")
    label_smoothing: float = opt(0.1, "label smoothing of the training cross-entropy")
    train_fraction: float = opt(1.0, "use this leading fraction of the training split (learning curves)")
    train: TrainConfig = sub(TrainConfig)


@dataclass
class TranslateRun(TransformerRun):
    text: str = opt("我想喝水。", "sentence to translate")
    plot: str = opt("", "save the cross-attention grid (PNG) here")


# threads=1 as in the other topics: small matrices, a busy 2-core machine.
PRESETS = {
    "tiny": {"threads": 1, "n_layer": 1, "n_head": 2, "n_embd": 32, "n_ff": 64, "dropout": 0.1,
             "train.max_steps": 30, "train.batch_size": 32, "train.eval_interval": 0, "train.warmup_steps": 5,
             "train.lr": 3e-3, "beam": 3},
    "small": {"threads": 1, "n_layer": 2, "n_head": 4, "n_embd": 128, "n_ff": 256, "dropout": 0.2, "norm": "pre",
              "train.max_steps": 1200, "train.batch_size": 64, "train.eval_interval": 200, "train.schedule": "noam",
              "train.warmup_steps": 100, "train.lr": 2e-3, "train.weight_decay": 0.01},
}


def _model_config(cfg: TransformerRun, n_src: int, n_tgt: int) -> TransformerConfig:
    return TransformerConfig(src_vocab=n_src, tgt_vocab=n_tgt, n_layer=cfg.n_layer, n_head=cfg.n_head,
                             n_embd=cfg.n_embd, n_ff=cfg.n_ff, dropout=cfg.dropout, norm=cfg.norm, pos=cfg.pos,
                             tie_weights=cfg.tie_weights, sdpa=cfg.sdpa, max_len=max(128, cfg.max_len + 2))


def _name(cfg: TransformerRun) -> str:
    if cfg.name and cfg.name not in (cfg.preset, "default"):
        return cfg.name
    name = cfg.preset or "default"
    if cfg.direction != "zh-en" and cfg.data != "dates":
        name += f"-{cfg.direction}"
    if cfg.data != "hsk-pairs":
        name += f"-{Path(cfg.data).stem}"
    return name


# ------------------------------------------------------------------------------ evaluation

def translate_examples(model, examples, data, device, beam: int = 1, length_penalty: float = 1.0,
                       max_len: int = 60, batch_size: int = 64) -> list[str]:
    """Detokenized hypotheses for a list of Examples, in order."""
    hyps = []
    for b in eval_batches(examples, data.src_vocab, data.tgt_vocab, batch_size):
        out = translate_batch(model, b["src"].to(device), beam, length_penalty, max_len)
        hyps += [DETOKENIZE[data.tgt_lang](data.tgt_vocab.decode(row.cpu())) for row in out.tokens]
    return hyps



def evaluate_split(model, data, cfg: TransformerRun, device, split: str = "test") -> dict:
    examples = getattr(data, split)
    out = {}
    for mode, beam in (("greedy", 1), ("beam", cfg.beam)):
        hyps = translate_examples(model, examples, data, device, beam, cfg.length_penalty, cfg.max_len)
        out[mode] = scores(hyps, examples, data)
        out[mode]["samples"] = [{"src": e.src_text, "ref": e.tgt_text, "hyp": h} for e, h in zip(examples[:8], hyps[:8])]
    return out


@torch.no_grad()
def token_nll(model, batches, device) -> float:
    """Mean NLL per target token (teacher forced, no smoothing): the val loss that picks best.pt."""
    total, n = 0.0, 0
    for b in batches:
        logits = model(b["src"].to(device), b["tgt_in"].to(device))
        tgt = b["tgt_out"].to(device).flatten()
        k = int((tgt != 0).sum())
        total += float(label_smoothed_cross_entropy(logits.flatten(0, 1), tgt, 0.0)) * k
        n += k
    return total / max(n, 1)


# ------------------------------------------------------------------------------ train


def load_data(cfg: TransformerRun):
    data = load_translation(cfg.data, cfg.direction, seed=cfg.seed)
    if not 0 < cfg.train_fraction <= 1:
        raise ConfigError(f"--train_fraction must be in (0, 1], got {cfg.train_fraction}")
    if cfg.train_fraction < 1:  # the split is already shuffled: a leading slice is a random subset
        data.train = data.train[: max(1, int(len(data.train) * cfg.train_fraction))]
    return data


def train(cfg: TransformerRun, fresh: bool = True) -> dict:
    """Train one model, score it on val and test (greedy and beam), write summary.json."""
    cfg.name = _name(cfg)
    if not fresh and not cfg.train.resume:
        done = finished_run(run_dir(cfg, TOPIC), cfg)
        if done is not None:
            log.info(f"reusing finished run {run_dir(cfg, TOPIC)}")
            return done
    run, device = prepare_run(cfg, TOPIC)
    data = load_data(cfg)
    write_json(run / "vocab.json", {"src": data.src_vocab.state_dict(), "tgt": data.tgt_vocab.state_dict(),
                                    "src_lang": data.src_lang, "tgt_lang": data.tgt_lang, "meta": data.meta})
    torch.manual_seed(cfg.seed)
    model = Transformer(_model_config(cfg, len(data.src_vocab), len(data.tgt_vocab)))
    log.info(f"transformer {cfg.n_layer}+{cfg.n_layer} layers, {cfg.n_head} heads, d={cfg.n_embd} ({cfg.norm}-LN, "
             f"{cfg.pos} positions): {count_params(model):,} parameters; {len(data.train)} train pairs; run folder {run}")
    batches = make_batches(data.train, data.src_vocab, data.tgt_vocab, cfg.train.batch_size, seed=cfg.seed)
    val = eval_batches(data.val, data.src_vocab, data.tgt_vocab, 128)
    cpu0 = time.process_time()  # CPU seconds of this process: comparable even when the machine is busy
    res = fit(model, lambda m, b: transformer_loss(m, b, cfg.label_smoothing), batches, cfg.train, run_dir=run,
              evaluate=lambda m: {"val_loss": token_nll(m, val, device)}, device=device, unit="samples", config=cfg)
    load_weights(model, run / "ckpt" / "best.pt", map_location=device)
    model.eval()
    summary = {"params": count_params(model), "steps": res.step, "train_seconds": round(res.seconds, 1),
               "train_cpu_seconds": round(time.process_time() - cpu0, 1),
               "val_loss": res.best, "train_pairs": len(data.train),
               "val": {"greedy": scores(translate_examples(model, data.val, data, device, 1, max_len=cfg.max_len),
                                        data.val, data)},
               "test": evaluate_split(model, data, cfg, device), "config": comparable_config(cfg)}
    write_json(run / "summary.json", summary)
    g, b = summary["test"]["greedy"], summary["test"]["beam"]
    key = "exact_match" if "exact_match" in g else "bleu"
    log.info(f"transformer: val loss {res.best:.3f}, val {key} {summary['val']['greedy'][key]:.2f}; test {key} greedy "
             f"{g[key]:.2f}, beam({cfg.beam}) {b[key]:.2f} ({res.seconds:.0f}s)")
    return summary


# ------------------------------------------------------------------------------ loading, translate

def load_run(run: Path, device="cpu"):
    """(model, src vocab, tgt vocab, src lang, tgt lang, cfg) from a run folder written by `train`."""
    if not (run / "ckpt" / "best.pt").exists():
        raise FileNotFoundError(f"no trained model in {run}; train it first: llmpath transformer train")
    cfg = from_dict(TransformerRun, read_json(run / "config.json"))
    v = read_json(run / "vocab.json")
    sv, tv = Vocab.from_state_dict(v["src"]), Vocab.from_state_dict(v["tgt"])
    model = Transformer(_model_config(cfg, len(sv), len(tv)))
    load_weights(model, run / "ckpt" / "best.pt", map_location=device)
    return model.to(device).eval(), sv, tv, v["src_lang"], v["tgt_lang"], cfg


def translate(cfg: TranslateRun) -> str:
    setup_logging()
    cfg.name = _name(cfg)
    model, sv, tv, src_lang, tgt_lang, _ = load_run(run_dir(cfg, TOPIC))
    toks = TOKENIZE[src_lang](cfg.text)
    if not toks:
        raise ConfigError("nothing to translate: the text is empty")
    out = translate_batch(model, torch.tensor([sv.encode(toks)]), cfg.beam, cfg.length_penalty, cfg.max_len)
    out_toks = tv.decode(out.tokens[0])
    text = DETOKENIZE[tgt_lang](out_toks)
    print(text)
    if cfg.plot:
        from llmpath.plotting import save_fig
        from llmpath.transformer.figures import attention_grid

        src = torch.tensor([sv.encode(toks)])
        tgt_in = torch.tensor([[1] + tv.encode(out_toks)])
        maps = model.attention_maps(src, tgt_in)
        fig = attention_grid(maps["cross"], toks, ["<bos>"] + out_toks, f"cross-attention: {cfg.text}")
        log.info(f"attention grid: {save_fig(fig, cfg.plot)}")
    return text


# ------------------------------------------------------------------------------ tables: stage 3, ablations, curve

STAGE3 = {"none": "第 3 章 无注意力 GRU", "bahdanau": "第 3 章 Bahdanau GRU", "dot": "第 3 章 Luong dot GRU",
          "general": "第 3 章 Luong general GRU", "concat": "第 3 章 Luong concat GRU"}
# stage 3's best test BLEU (greedy) as measured in docs/tutorials/03_attention_seq2seq.md: the bar's floor, since
# `llmpath tour` trains only stage 3's none and Bahdanau runs (and `--only=4` none at all)
STAGE3_MEASURED = {"small": ("第 3 章 Luong concat GRU（教程实测值）", 7.77)}


def _row(name: str, r: dict) -> str:
    g, b = r["test"]["greedy"], r["test"]["beam"]
    return (f"| {name} | {r['params']:,} | {r['val_loss']:.3f} | {g['bleu']:.2f} | {b['bleu']:.2f} | "
            f"{g.get('chrf', float('nan')):.1f} | {b.get('chrf', float('nan')):.1f} | {r['train_seconds']:.0f} |")


HEAD = ("| 模型 | 参数量 | 验证损失 | BLEU 贪心 | BLEU 束搜索 | chrF 贪心 | chrF 束搜索 | 训练墙钟秒 |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|")


def compare_table(ours: dict, out: str, preset: str) -> tuple[str, dict]:
    """Our run next to stage 3's finished runs of the same preset (never retrained here) and the bar."""
    lines, best = [HEAD], None
    for att, label in STAGE3.items():
        f = Path(out) / "seq2seq" / f"{preset}-{att}" / "summary.json"
        if f.exists():
            r = read_json(f)
            lines.append(_row(label, r))
            if att != "none" and (best is None or r["test"]["greedy"]["bleu"] > best[1]):
                best = (label, r["test"]["greedy"]["bleu"])
    ref = STAGE3_MEASURED.get(preset)
    if ref is not None and (best is None or ref[1] > best[1]):  # the tour trains only none and Bahdanau
        best = ref
    lines.append(_row("**Transformer**（本章）", ours))
    bleu_ours = ours["test"]["greedy"]["bleu"]
    bar = {"best_stage3": best, "ours": bleu_ours, "passed": best is not None and bleu_ours > best[1]}
    if best is not None:
        lines += ["", f"门槛：Transformer 的测试集 BLEU（贪心）高于第 3 章最好的模型（{best[0]}，{best[1]:.2f}）-> "
                      f"{'通过' if bar['passed'] else '未通过'}（{bleu_ours:.2f}）"]
    else:
        lines += ["", "（没有找到第 3 章的运行结果：先跑 `llmpath seq2seq compare` 才能比较）"]
    return "\n".join(lines), bar


def ablations(cfg: TransformerRun) -> dict[str, tuple[str, dict]]:
    """label -> (run-name tag, overrides of the base run); each changes one thing."""
    other = "post" if cfg.norm == "pre" else "pre"  # the LayerNorm placement the base does not use
    return {"基线": ("", {}), "无位置编码": ("no-pos", {"pos": "none"}), "单头注意力": ("1-head", {"n_head": 1}),
            f"{other.capitalize()}-LN": (f"{other}-ln", {"norm": other}), "无标签平滑": ("no-ls", {"label_smoothing": 0.0})}


def _variant(cfg: TransformerRun, tag: str, **over) -> TransformerRun:
    """A copy of cfg with `over` applied, in its own run folder <base name>-<tag>."""
    c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train), **over)
    base = _name(dataclasses.replace(cfg, name=""))
    c.name = f"{base}-{tag}" if tag else base
    return c


def ablate(cfg: TransformerRun, fresh: bool = False) -> dict:
    """Train (or reuse) one run per ablation at the same budget; one table, val and test columns."""
    runs = {}
    for label, (tag, over) in ablations(cfg).items():
        runs[label] = train(_variant(cfg, tag, **over), fresh=fresh)
    lines = ["| 变体 | 参数量 | 验证损失 | 验证 BLEU 贪心 | 测试 BLEU 贪心 | 测试 BLEU 束搜索 | 测试 chrF 贪心 | 训练 CPU 秒 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in runs.items():
        lines.append(f"| {label} | {r['params']:,} | {r['val_loss']:.3f} | {r['val']['greedy']['bleu']:.2f} | "
                     f"{r['test']['greedy']['bleu']:.2f} | {r['test']['beam']['bleu']:.2f} | "
                     f"{r['test']['greedy'].get('chrf', float('nan')):.1f} | {r.get('train_cpu_seconds', float('nan')):.0f} |")
    table = "\n".join(lines)
    write_json(Path(cfg.out) / TOPIC / f"ablate-{_name(dataclasses.replace(cfg, name=''))}.json",
               {"runs": runs, "table": table})
    print(table)
    return {"runs": runs, "table": table}


FRACTIONS = (0.25, 0.5, 1.0)


def curve(cfg: TransformerRun, fresh: bool = False) -> dict:
    """Learning curve: val/test BLEU against the fraction of the training split (same steps)."""
    runs = {f: train(_variant(cfg, "" if f == 1.0 else f"frac{f:g}", train_fraction=f), fresh=fresh) for f in FRACTIONS}
    lines = ["| 训练数据比例 | 训练句对 | 验证损失 | 验证 BLEU 贪心 | 测试 BLEU 贪心 | 测试 chrF 贪心 |", "|---:|---:|---:|---:|---:|---:|"]
    for f, r in runs.items():
        lines.append(f"| {f:g} | {r['train_pairs']} | {r['val_loss']:.3f} | {r['val']['greedy']['bleu']:.2f} | "
                     f"{r['test']['greedy']['bleu']:.2f} | {r['test']['greedy'].get('chrf', float('nan')):.1f} |")
    table = "\n".join(lines)
    write_json(Path(cfg.out) / TOPIC / f"curve-{_name(dataclasses.replace(cfg, name=''))}.json", {"runs": runs, "table": table})
    print(table)
    return {"runs": runs, "table": table}


# ------------------------------------------------------------------------------ tour, smoke

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> dict:
    """Stage 4 of `llmpath tour`: train the preset, compare with stage 3's finished runs, draw the figures."""
    from llmpath.transformer.figures import all_figures

    cfg = build_config(TransformerRun, [f"--preset={preset}", f"--out={out}"], PRESETS)
    res = train(cfg, fresh=fresh)
    table, bar = compare_table(res, out, preset)
    figs = all_figures(cfg)
    return {"metric": "Transformer test BLEU (greedy, zh->en)", "value": res["test"]["greedy"]["bleu"],
            "bar": "beats the best stage-3 model's test BLEU (greedy) at the same preset", "passed": bool(bar["passed"]),
            "table": table, "figures": [str(p) for p in figs]}


def smoke() -> str:
    """Doctor check: a tiny Transformer decodes, and the KV cache changes nothing."""
    from llmpath.transformer.decode import greedy

    torch.manual_seed(0)
    m = Transformer(TransformerConfig(src_vocab=12, tgt_vocab=12, n_layer=1, n_head=2, n_embd=8, n_ff=16)).eval()
    src = torch.randint(4, 12, (2, 5))
    if not torch.equal(greedy(m, src, 8, use_cache=True).tokens, greedy(m, src, 8, use_cache=False).tokens):
        raise RuntimeError("cached decoding differs from uncached decoding")
    return "tiny Transformer decodes (cached == uncached)"


# ------------------------------------------------------------------------------ commands

def _train_cmd(cfg: TransformerRun) -> int:
    res = train(cfg)
    if cfg.data == "hsk-pairs" and cfg.direction == "zh-en":
        print(compare_table(res, cfg.out, cfg.preset)[0])
    return 0


def _eval_cmd(cfg: TransformerRun) -> int:
    cfg.name = _name(cfg)
    model, *_, saved = load_run(run_dir(cfg, TOPIC))
    data = load_data(saved)
    cfg2 = dataclasses.replace(saved, beam=cfg.beam, length_penalty=cfg.length_penalty, max_len=cfg.max_len)
    for mode, r in evaluate_split(model, data, cfg2, "cpu").items():
        print(mode, {k: round(v, 2) for k, v in r.items() if k != "samples"})
    return 0


def _figures_cmd(cfg: TransformerRun) -> int:
    from llmpath.transformer.figures import all_figures

    setup_logging()
    for p in all_figures(cfg, docs=True):
        log.info(f"wrote {p}")
    return 0


COMMANDS = {
    "train": Command(_train_cmd, TransformerRun, "train the encoder-decoder and score it on val and test (BLEU, chrF)",
                     examples=("llmpath transformer train", "llmpath transformer train --preset=tiny",
                               "llmpath transformer train --norm=pre --pos=learned",
                               "llmpath transformer train --data=dates --preset=tiny --train.max_steps=300")),
    "eval": Command(_eval_cmd, TransformerRun, "score a trained run on the test split (greedy and beam)",
                    examples=("llmpath transformer eval --beam=10 --length-penalty=0.6",)),
    "translate": Command(lambda c: translate(c) and 0, TranslateRun, "translate a sentence with a trained run",
                         positional=("text",),
                         examples=('llmpath transformer translate "我想喝水。"',
                                   'llmpath transformer translate "我想喝水。" --plot cross.png')),
    "ablate": Command(lambda c: ablate(c) and 0, TransformerRun,
                      "no positions / 1 head / pre-LN / no label smoothing, each against the base at the same budget",
                      examples=("llmpath transformer ablate",)),
    "curve": Command(lambda c: curve(c) and 0, TransformerRun, "BLEU against the fraction of training data used",
                     examples=("llmpath transformer curve",)),
    "figures": Command(_figures_cmd, TransformerRun, "positional encoding, attention grids, model structure",
                       examples=("llmpath transformer figures",)),
}
