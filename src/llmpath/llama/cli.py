"""`llmpath llama ...`: a Llama-style decoder and a mixture of experts against GPT-2's block.

    llmpath llama train                          # preset small: the Llama-style model on char-level Shakespeare
    llmpath llama compare --workers=2            # GPT-2's block vs Llama-style vs Llama-style + MoE: the main table
    llmpath llama ablation --seeds=0,1 --workers=2   # one change at a time: RMSNorm, RoPE, SwiGLU, GQA
    llmpath llama sample "ROMEO:"                # continue a prompt with the trained model
    llmpath llama kv-memory                      # KV-cache bytes per token: MHA / GQA / MQA, ours and Llama-2/3
    llmpath llama figures                        # RoPE, attention with RoPE vs learned positions, expert usage
    llmpath llama export --dir runs/llama/small/hf   # LlamaForCausalLM (or Mixtral) .from_pretrained reads it
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from llmpath.common import get_device, log, map_processes, markdown_table, set_threads, setup_logging, write_json
from llmpath.config import Command, ConfigError, build_config, opt, parse_seeds
from llmpath.generation import generate
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import GPTRun
from llmpath.llama.experiments import (MOE, MOE_POOLED, TOPIC, VARIANTS, LlamaRun, gpt_run, llama_from_gpt, mean_spread,
                                       train_any, usage_history, variant_run)
from llmpath.llama.figures import (attention_maps_figure, expert_usage_figure, head_attention, kv_cache_figure,
                                   kv_cache_table, rope_frequencies_figure)
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.plotting import save_fig
from llmpath.runs import load_run, open_folder, run_path, sub_config
from llmpath.tour import StageResult


# Stage 5's shapes and recipes (GPT's `tiny` and `small`), so that every difference is the architecture; the
# Llama-style model shares its key/value heads in pairs (one pair in `tiny`, which has two heads).
PRESETS: dict[str, dict] = {"tiny": {**GPT_PRESETS["tiny"], "model.n_kv_head": 1},
                            "small": {**GPT_PRESETS["small"], "model.n_kv_head": 2}}


# ------------------------------------------------------------------------------ train

def train(cfg: LlamaRun) -> dict:
    """Pretrain one decoder with the options given (default: the Llama-style model) on a text corpus."""
    return train_lm(cfg)


# ---------------------------------------------------------------------------- compare

@dataclass
class CompareRun(LlamaRun):
    workers: int = opt(1, "runs trained side by side, one process each (use with --threads=1)", min=1, result=False)
    pooled: bool = opt(False, "also train the MoE with the balancing loss pooled over layers (Hugging Face's way)")


def _check(configs: list) -> None:
    """Refuse a bad model option in the parent, before any process starts."""
    for c in configs:
        if isinstance(c, LlamaRun):
            c.model.check()  # a variant's switches come after build_config's own checks


def train_many(configs: list, workers: int) -> list[dict]:
    _check(configs)
    return map_processes(train_any, configs, workers)


def compare_configs(cfg: LlamaRun) -> dict[str, LlamaRun | GPTRun]:
    """"gpt": stage 5's own run (runs/gpt/<preset>); "llama", "moe" (and "moe-pooled"): runs/llama/<preset>-<name>."""
    base = sub_config(cfg, LlamaRun)
    names = ("moe", "moe-pooled", "llama") if getattr(cfg, "pooled", False) else ("moe", "llama")
    return {**{name: variant_run(base, name) for name in names}, "gpt": gpt_run(base)}  # the slowest first


def _path(c: LlamaRun | GPTRun) -> Path:
    return run_path(c, "gpt" if isinstance(c, GPTRun) else TOPIC)


def compare(cfg: CompareRun) -> dict:
    """GPT-2's block, the Llama-style model and Llama + MoE at equal (active) parameters and steps: one table."""
    setup_logging()
    runs = compare_configs(cfg)
    done = dict(zip(runs, train_many(list(runs.values()), cfg.workers)))
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-compare"), TOPIC)
    write_json(out / "results.json", done)
    print(compare_table(done))
    return done


LABELS = {name: label for name, label, _ in [*VARIANTS, MOE, MOE_POOLED]}
LABELS["gpt"] = "GPT（第 5 章：LayerNorm、学习的位置、GELU、MHA、有偏置）"


def compare_table(done: dict) -> str:
    """Parameters (total, active), steps, seconds, val loss and the largest expert share of each run."""
    rows = []
    for name in [n for n in ("gpt", "llama", "moe", "moe-pooled") if n in done]:
        r = done[name]
        usage = r.get("usage")
        share = f"{max(max(row) for row in usage):.1%}" if usage else "—"
        rows.append([LABELS[name], f"{r['total_params']:,}", f"{r['active_params']:,}", r["steps"],
                     f"{r['seconds']:.0f}", f"{r['val_loss']:.4f}", share])
    return markdown_table(["模型", "参数量", "每个词元用到的参数", "步数", "秒", "验证损失（奈特/字符）", "最忙专家的份额"],
                          rows, "lrrrrrr")


# ---------------------------------------------------------------------------- ablation

@dataclass
class AblationRun(CompareRun):
    seeds: str = opt("0,1", "comma-separated seeds; the table shows the mean and half the range")


def ablation(cfg: AblationRun) -> dict:
    """From GPT-2's block to Llama's: each change alone, then all; mean and spread of the val loss over seeds."""
    setup_logging()
    base = sub_config(cfg, LlamaRun)
    seeds = parse_seeds(cfg.seeds)
    grid = {name: [variant_run(base, name, s) for s in seeds] for name, _, _ in VARIANTS}
    flat = [c for cs in grid.values() for c in cs]
    done = dict(zip([c.name for c in flat], train_many(flat, cfg.workers)))
    results = {}
    for name, label, _ in VARIANTS:
        rs = [done[c.name] for c in grid[name]]
        results[name] = {"label": label, "params": rs[0]["total_params"], "seeds": seeds,
                         "val_losses": [r["val_loss"] for r in rs],
                         "seconds": statistics.mean(r["seconds"] for r in rs)}
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-ablation"), TOPIC)
    write_json(out / "results.json", results)
    print(ablation_table(results))
    return results


def ablation_table(results: dict) -> str:
    base = statistics.mean(results["gpt2"]["val_losses"])
    rows = []
    for name, r in results.items():
        delta = statistics.mean(r["val_losses"]) - base
        rows.append([r["label"], f"{r['params']:,}", mean_spread(r["val_losses"]),
                     "—" if name == "gpt2" else f"{delta:+.4f}", f"{r['seconds']:.0f}"])
    seeds = ", ".join(map(str, next(iter(results.values()))["seeds"]))
    return markdown_table(["变体", "参数量", f"验证损失（种子 {seeds}：均值 ± 半极差）", "相对 GPT-2 的块", "秒/次"],
                          rows, "lrrrr")


# ------------------------------------------------------------------------------ sample

@dataclass
class SampleRun(LlamaRun):
    run: str = opt("", "run folder to load (default: <out>/llama/<name or preset>)")
    prompt: str = opt("ROMEO:", "text to continue")
    max_new_tokens: int = opt(300, "tokens to generate", min=0)
    temperature: float = opt(0.8, "softmax temperature (0 = greedy)", min=0)
    top_k: int = opt(50, "sample among the k most likely tokens (0 = all)", min=0)
    top_p: float = opt(1.0, "sample among the most likely tokens whose probability adds up to p (1 = all)", above=0, max=1)


def _source(cfg: LlamaRun, run: str = "") -> Path:
    src = Path(run) if run else run_path(cfg, TOPIC)
    if not (src / "ckpt").exists():
        raise ConfigError(f"no trained model in {src}; train one first: llmpath llama train --preset={cfg.preset or 'small'}"
                          " (or point --run at a run folder)")
    return src


def sample(cfg: SampleRun) -> str:
    """Continue --prompt with a trained model (the shared generation module, KV cache on)."""
    setup_logging()
    set_threads(cfg.threads)
    model, tok, _ = load_run(_source(cfg, cfg.run), get_device(cfg.device), topic=TOPIC)
    try:
        prompt = tok.encode(cfg.prompt)
    except ValueError as e:
        raise ConfigError(f"--prompt: {e}") from None
    if not prompt:
        raise ConfigError("--prompt is empty; give at least one character, e.g. --prompt 'ROMEO:'")
    g = torch.Generator().manual_seed(cfg.seed)
    ids = generate(model, prompt, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                   top_p=cfg.top_p, generator=g)
    text = cfg.prompt + tok.decode(ids[0, min(len(prompt), model.cfg.block_size):].tolist())
    print(text)
    return text


# ---------------------------------------------------------------------------- kv-memory

def kv_memory(cfg: LlamaRun) -> str:
    """KV-cache bytes per token and for a 4096-token context: MHA, GQA, MQA; our preset and Llama-2/3 shapes."""
    rows = kv_cache_table()
    table = markdown_table(["模型", "层数", "查询头", "KV 头", "头维", "每词元（bf16）", "4096 词元（bf16）", "4096 词元（fp32）"],
                           [[r["model"], r["n_layer"], r["n_head"], r["n_kv_head"], r["head_size"],
                             f"{r['kib_per_token_bf16']:g} KiB", f"{r['mib_context_bf16']:g} MiB",
                             f"{r['mib_context_fp32']:g} MiB"] for r in rows], "lrrrrrrr")
    print(table)
    return table


# ------------------------------------------------------------------------------ figures

def figures(cfg: LlamaRun) -> list[Path]:
    """RoPE frequencies and rotation, KV-cache sizes, one head's attention with RoPE vs learned positions,
    expert usage over training (the last two from the compare runs, trained first when missing)."""
    setup_logging()
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-compare"), TOPIC) / "figures"
    paths = [save_fig(rope_frequencies_figure(), out / "rope.png"), save_fig(kv_cache_figure(), out / "kv_cache.png")]
    configs = compare_configs(cfg)
    runs = {name: _path(c) for name, c in configs.items()}
    if all((p / "results.json").exists() for p in runs.values()):
        maps, tokens = {}, None
        for name, label in (("llama", "RoPE（Llama 式）"), ("gpt", "学习的位置编码（第 5 章的 GPT）")):
            model, tok, _ = load_run(runs[name])
            if not isinstance(model, Llama):  # the GPT, as our Llama in GPT-2 mode: the same function
                model = llama_from_gpt(model)
            ids = torch.tensor([tok.encode("ROMEO:\nBut soft, what light")])
            maps[label] = head_attention(model, ids, layer=0, head=0)
            tokens = [tok.decode([i]) for i in ids[0].tolist()]
        paths.append(save_fig(attention_maps_figure(maps, tokens), out / "attention_rope_vs_learned.png"))
        paths.append(save_fig(expert_usage_figure(usage_history(configs["moe"])), out / "expert_usage.png"))
        pooled = variant_run(sub_config(cfg, LlamaRun), "moe-pooled")
        if (run_path(pooled, TOPIC) / "results.json").exists():  # trained by `llmpath llama compare --pooled`
            paths.append(save_fig(expert_usage_figure(usage_history(pooled)), out / "expert_usage_pooled.png"))
    else:
        log.info("the compare runs are not finished: run `llmpath llama compare` for the attention and expert figures")
    for p in paths:
        log.info(f"wrote {p}")
    return paths


# ------------------------------------------------------------------------------- export

@dataclass
class ExportRun(LlamaRun):
    run: str = opt("", "run folder to export (default: <out>/llama/<name or preset>)")
    dir: str = opt("", "folder to write config.json + model.safetensors to (default: <run>/hf)")


def export(cfg: ExportRun) -> int:
    """Write a trained run as a Hugging Face LlamaForCausalLM (or MixtralForCausalLM) folder."""
    from llmpath.llama.hf import to_hf

    setup_logging()
    src = _source(cfg, cfg.run)
    model, tok, _ = load_run(src, topic=TOPIC)
    try:
        path = to_hf(model, cfg.dir or src / "hf")
    except ValueError as e:
        raise ConfigError(f"cannot export {src}: {e}") from None
    write_json(Path(path) / "llmpath_tokenizer.json", tok.state_dict())
    kind = "MixtralForCausalLM" if model.cfg.n_expert else "LlamaForCausalLM"
    log.info(f"wrote {path}: transformers.{kind}.from_pretrained('{path}') loads it")
    return 0


# --------------------------------------------------------------------------------- tour

BARS = {"tiny": (0.5, 0.5, 0.75), "small": (0.02, 0.02, 0.40)}  # llama - gpt, moe - llama, largest expert share


def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 9 of `llmpath tour`: GPT-2's block vs Llama-style vs MoE on Shakespeare; the figures."""
    cfg = build_config(CompareRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)
    done = compare(cfg)
    shown = figures(build_config(LlamaRun, [f"--preset={preset}", f"--out={out}"], PRESETS))
    d_llama, d_moe, top_share = BARS.get(preset, BARS["small"])
    gap = done["llama"]["val_loss"] - done["gpt"]["val_loss"]
    moe_gap = done["moe"]["val_loss"] - done["llama"]["val_loss"]
    share = max(max(row) for row in done["moe"]["usage"])
    passed = gap <= d_llama and moe_gap <= d_moe and share <= top_share
    bar = (f"Llama-style <= stage 5's GPT + {d_llama}, MoE <= dense + {d_moe}, "
           f"no expert above {top_share:.0%} (val loss, nats/char)")
    table = (compare_table(done) + f"\n\nLlama 式 − 第 5 章的 GPT：{gap:+.4f}；MoE − 稠密 Llama 式：{moe_gap:+.4f}；"
             f"最忙专家的份额 {share:.1%}\n\n示例（Llama 式，温度 0.8，top-k 50）：\n\n```text\n"
             f"{done['llama']['sample'][:300]}\n```")
    return StageResult("val loss, Llama-style (nats/char)", done["llama"]["val_loss"], bar, passed, table,
                       [*done["llama"]["figures"], *map(str, shown)])


def smoke() -> str:
    """Doctor check: a tiny Llama with GQA and MoE: SDPA == hand-written attention, KV cache == no cache."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=11, n_layer=1, n_head=4, n_kv_head=2, n_embd=16, block_size=16, n_expert=2, top_k=1)
    model = Llama(cfg).eval()
    slow = Llama(replace(cfg, sdpa=False)).eval()
    slow.load_state_dict(model.state_dict())
    x = torch.randint(0, 11, (2, 7))
    if not torch.allclose(model(x)[0], slow(x)[0], atol=1e-5):
        raise RuntimeError("hand-written and SDPA attention disagree")
    if not torch.equal(generate(model, x[:1], 8, greedy=True), generate(model, x[:1], 8, greedy=True, use_cache=False)):
        raise RuntimeError("KV-cache decoding differs from full recomputation")
    return "tiny Llama ok (GQA + MoE; hand-written == SDPA attention; KV cache == no cache)"


COMMANDS = {
    "train": Command(train, LlamaRun, "pretrain one decoder (default: Llama-style) on a text corpus",
                     examples=("llmpath llama train", "llmpath llama train --preset=tiny",
                               "llmpath llama train --model.n_expert=4 --name=small-moe",
                               "llmpath llama train --model.n_kv_head=1 --name=small-mqa")),
    "compare": Command(compare, CompareRun, "GPT-2's block vs Llama-style vs Llama + MoE: the main table",
                       examples=("llmpath llama compare --workers=2",)),
    "ablation": Command(ablation, AblationRun, "one change at a time from GPT-2's block, over seeds",
                        examples=("llmpath llama ablation --seeds=0,1 --workers=2",)),
    "sample": Command(sample, SampleRun, "continue a prompt with a trained model", positional=("prompt",),
                      examples=('llmpath llama sample "ROMEO:"',)),
    "kv-memory": Command(kv_memory, LlamaRun, "KV-cache bytes per token: MHA / GQA / MQA, ours and Llama-2/3 shapes",
                         examples=("llmpath llama kv-memory",)),
    "figures": Command(figures, LlamaRun, "RoPE, attention with RoPE vs learned positions, expert usage, KV sizes",
                       examples=("llmpath llama figures",)),
    "export": Command(export, ExportRun, "write a run as a Hugging Face Llama (or Mixtral) folder",
                      examples=("llmpath llama export --dir runs/llama/small/hf",)),
}
