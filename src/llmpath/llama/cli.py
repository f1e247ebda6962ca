"""`llmpath llama ...`: a Llama-style decoder and a mixture of experts against GPT-2's block.

    llmpath llama train                          # preset small: the Llama-style model on char-level Shakespeare
    llmpath llama compare --workers=2            # GPT-2's block vs Llama-style vs Llama-style + MoE: the main table
    llmpath llama ablation --seeds=0,1 --workers=2   # one change at a time: RMSNorm, RoPE, SwiGLU, GQA
    llmpath llama sample "ROMEO:"                # continue a prompt with the trained model
    llmpath llama kv-memory                      # KV-cache bytes per token: MHA / GQA / MQA, ours and Llama-2/3
    llmpath llama figures                        # RoPE, attention with RoPE vs learned positions, expert usage
    llmpath llama export --dir runs/llama/small/hf   # LlamaForCausalLM (or Mixtral) .from_pretrained reads it
    llmpath llama context                        # read past the trained context: extrapolate / interpolate / NTK
    llmpath llama speculative                    # a small draft model proposes, the small preset verifies
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from llmpath.common import (get_device, log, map_processes, markdown_table, seed_everything, set_threads, setup_logging,
                            write_json)
from llmpath.config import Command, ConfigError, TrainConfig, build_config, opt, parse_seeds
from llmpath.data import RandomWindows, split_text
from llmpath.generation import generate, speculative_generate
from llmpath.gpt.data import encode_known, lm_text
from llmpath.gpt.finetune import lm_loss
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import GPTRun
from llmpath.llama.context import FINETUNED, METHODS, bucket_means, context_figure, extend_context, position_losses
from llmpath.llama.context import LABELS as CONTEXT_LABELS
from llmpath.llama.experiments import (MOE, MOE_POOLED, TOPIC, VARIANTS, LlamaRun, gpt_run, llama_from_gpt, mean_spread,
                                       train_any, train_lm, usage_history, variant_run)
from llmpath.llama.figures import (attention_maps_figure, expert_usage_figure, head_attention, kv_cache_figure,
                                   kv_cache_table, rope_frequencies_figure)
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.plotting import save_fig
from llmpath.runs import load_run, open_folder, run_path, sub_config, variant
from llmpath.tour import StageResult
from llmpath.train import fit

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


# ------------------------------------------------------------------------------ context

@dataclass
class ContextRun(LlamaRun):
    run: str = opt("", "run folder of the model to extend (default: <out>/llama/<name or preset>, trained when missing)")
    factors: str = opt("1,2,4", "read windows of these multiples of the trained context")
    methods: str = opt("none,interpolate,ntk", "RoPE extensions to compare (none, interpolate, ntk)")
    tokens: int = opt(65_536, "held-out tokens (test split) read at every length, cut into windows of that length",
                      min=1)
    finetune_steps: int = opt(200, "then finetune each extended model this many steps at the longest length (0 = skip)",
                              min=0)
    finetune_lr: float = opt(1e-3, "peak learning rate of that finetuning", above=0)


def _texts(run_cfg: LlamaRun, tok) -> tuple:
    """Token ids of the run's training text and of its held-out test text (the same 90/5/5 split as training)."""
    train_text, _, test_text = split_text(lm_text(run_cfg.data))
    return encode_known(tok, train_text), encode_known(tok, test_text)


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ConfigError(f"--methods={text!r}: choose among {', '.join(METHODS)}, comma-separated")
    return names


def _counts(text: str, option: str, example: str) -> list[int]:
    """'4,1,2' -> [1, 2, 4]: positive whole numbers, sorted, or a ConfigError saying what to type."""
    try:
        values = sorted({int(f) for f in text.split(",") if f.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise ConfigError(f"--{option}={text!r}: give whole numbers of at least 1 separated by commas, e.g. {example}")
    return values


def context(cfg: ContextRun) -> dict:
    """Held-out loss by position when a model trained at T tokens reads 1x, 2x, 4x T: RoPE extrapolated,
    interpolated or NTK-scaled, before and after a short finetuning at the longest length."""
    setup_logging()
    set_threads(cfg.threads)
    methods, factors = _methods(cfg.methods), _counts(cfg.factors, "factors", "1,2,4")
    device = get_device(cfg.device)
    if not cfg.run:
        train_lm(sub_config(cfg, LlamaRun))  # the plain `llmpath llama train` run (reused when finished)
    model, tok, run_cfg = load_run(_source(cfg, cfg.run), device, topic=TOPIC)
    trained = model.cfg.block_size
    lengths = [f * trained for f in factors]
    edges = sorted({0, trained, *lengths})  # buckets: inside the trained context, then each further stretch
    train_ids, test_ids = _texts(run_cfg, tok)
    rows, curves = [], {}

    def measure(m: Llama, method: str, tuned: bool) -> None:
        for n in lengths:
            losses = position_losses(m, test_ids, n, max(1, cfg.tokens // n))  # the same text at every length
            means = bucket_means(losses, edges)
            rows.append({"method": method, "finetuned": tuned, "length": n, "buckets": means,
                         "mean": float(losses.mean())})
            if n == lengths[-1]:
                curves[CONTEXT_LABELS[method] + (FINETUNED if tuned else "")] = losses.tolist()

    for method in methods:
        measure(extend_context(model, lengths[-1], method, trained), method, False)
    if cfg.finetune_steps:
        # the small preset's recipe at a lower peak lr, and its tokens per step: (smaller batch) x longer windows
        batch = max(1, run_cfg.train.batch_size * trained // lengths[-1])
        tc = TrainConfig(max_steps=cfg.finetune_steps, batch_size=batch, lr=cfg.finetune_lr,
                         warmup_steps=min(20, cfg.finetune_steps // 5), min_lr_ratio=0.1, beta2=0.95, weight_decay=0.1,
                         eval_interval=0, progress=False)
        for method in methods:
            seed_everything(cfg.seed)
            long = extend_context(model, lengths[-1], method, trained).train()
            res = fit(long, lm_loss, RandomWindows(train_ids, lengths[-1], tc.batch_size, seed=cfg.seed), tc,
                      device=device, unit="tokens")
            log.info(f"{method}: finetuned {res.step} steps at {lengths[-1]} tokens in {res.seconds:.0f} s")
            measure(long.eval(), method, True)
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-context"), TOPIC)
    title = f"训练时上下文 {trained}，读入 {lengths[-1]} 个字符：留出文本上逐位置的损失"
    fig = save_fig(context_figure(curves, trained, title), out / "figures" / "context_loss.png")
    results = {"trained": trained, "lengths": lengths, "edges": edges, "rows": rows, "curves": curves,
               "figures": [str(fig)], "finetune": {"steps": cfg.finetune_steps, "lr": cfg.finetune_lr},
               "run": str(_source(cfg, cfg.run))}
    write_json(out / "results.json", results)
    print(context_table(results))
    log.info(f"wrote {out / 'results.json'} and {fig}")
    return results


def context_table(results: dict) -> str:
    """One row per method x (finetuned) x length: mean loss in each position bucket and over all positions."""
    edges = results["edges"]
    heads = [f"位置 {a}–{b - 1}" for a, b in zip(edges[:-1], edges[1:])]
    rows = []
    for r in results["rows"]:
        cells = [f"{v:.3f}" for v in r["buckets"]] + ["—"] * (len(heads) - len(r["buckets"]))
        rows.append([CONTEXT_LABELS[r["method"]], "是" if r["finetuned"] else "否", r["length"], *cells,
                     f"{r['mean']:.3f}"])
    return markdown_table(["方法", "微调", "读入长度", *heads, "全部位置"], rows, "lllr" + "r" * len(heads))


# -------------------------------------------------------------------------- speculative

DRAFT = {"model.n_layer": 1, "model.n_head": 2, "model.n_kv_head": 1, "model.n_embd": 64}  # small's: 1/15 the weights


@dataclass
class SpeculativeRun(LlamaRun):
    target: str = opt("", "run folder of the target (default: <out>/llama/<name or preset>, trained when missing)")
    draft: str = opt("", "run folder of the draft (default: <out>/llama/<name or preset>-draft: 1 layer, 64 wide)")
    gammas: str = opt("1,2,4,8", "draft tokens per round to compare")
    prompts: int = opt(20, "prompts taken from the held-out text", min=1)
    prompt_tokens: int = opt(16, "tokens per prompt", min=1)
    max_new_tokens: int = opt(48, "tokens generated per prompt (prompt + these must fit in the context)", min=1)
    temperature: float = opt(1.0, "sampling temperature of both models (the greedy rows use argmax)", above=0)


def draft_run(cfg: LlamaRun) -> LlamaRun:
    """The draft model's run: the same data, tokenizer and recipe, one layer and 64 wide: <name>-draft."""
    return variant(cfg, "draft", **DRAFT)


def _check_room(cfg: SpeculativeRun, room: int) -> None:
    if cfg.prompt_tokens + cfg.max_new_tokens > room:
        raise ConfigError(f"--prompt_tokens + --max_new_tokens = {cfg.prompt_tokens + cfg.max_new_tokens} is more than "
                          f"the context ({room}); ask for fewer")


def speculative(cfg: SpeculativeRun) -> dict:
    """Acceptance rate and target forwards per token of speculative decoding against gamma, sampled and greedy."""
    setup_logging()
    set_threads(cfg.threads)
    gammas = _counts(cfg.gammas, "gammas", "1,2,4,8")
    device = get_device(cfg.device)
    base = sub_config(cfg, LlamaRun)
    _check_room(cfg, cfg.model.block_size)  # before any training; checked again with the models' own contexts
    if not cfg.target:
        train_lm(base)
    if not cfg.draft:
        train_lm(draft_run(base))
    target, tok, run_cfg = load_run(_source(cfg, cfg.target), device, topic=TOPIC)
    draft, draft_tok, _ = load_run(_source(draft_run(base), cfg.draft), device, topic=TOPIC)
    if tok.state_dict() != draft_tok.state_dict():
        raise ConfigError("the draft and the target have different tokenizers; train the draft on the same data and "
                          "tokenizer (the default --draft does)")
    _check_room(cfg, min(target.cfg.block_size, draft.cfg.block_size))
    _, test_ids = _texts(run_cfg, tok)
    stride = (len(test_ids) - cfg.prompt_tokens) // cfg.prompts
    prompts = [torch.as_tensor(test_ids[i * stride:i * stride + cfg.prompt_tokens])[None] for i in range(cfg.prompts)]
    rows = []
    for greedy in (False, True):
        start = time.perf_counter()
        for p in prompts:  # ordinary decoding: the reference for the tokens and the time
            generate(target, p, cfg.max_new_tokens, greedy=greedy, temperature=cfg.temperature)
        plain_s = time.perf_counter() - start
        for gamma in gammas:
            g = torch.Generator(device=device).manual_seed(cfg.seed)
            total = dict(proposed=0, accepted=0, refused=0, target_forwards=0, draft_forwards=0, new_tokens=0)
            outputs, start = [], time.perf_counter()
            for p in prompts:
                ids, stats = speculative_generate(target, draft, p, cfg.max_new_tokens, gamma=gamma,
                                                  temperature=cfg.temperature, greedy=greedy, generator=g)
                total = {k: total[k] + stats[k] for k in total}
                outputs.append(ids)
            seconds = time.perf_counter() - start
            # greedy: the same tokens as the target alone, prompt by prompt (sampling is checked in the tests)
            same = sum(torch.equal(ids, generate(target, p, cfg.max_new_tokens, greedy=True))
                       for p, ids in zip(prompts, outputs)) if greedy else None
            rows.append({"greedy": greedy, "gamma": gamma, **total, "seconds": round(seconds, 2),
                         "plain_seconds": round(plain_s, 2), "same_as_greedy": same})
    results = {"target": str(_source(cfg, cfg.target)), "draft": str(_source(draft_run(base), cfg.draft)),
               "target_params": target.num_params(), "draft_params": draft.num_params(),
               "prompts": cfg.prompts, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
               "rows": rows}
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-speculative"), TOPIC)
    write_json(out / "results.json", results)
    print(speculative_table(results))
    return results


def speculative_table(results: dict) -> str:
    """Per mode and gamma: proposed, kept, rates, tokens per target forward against Leviathan et al.'s formula."""
    rows = []
    for r in results["rows"]:
        alpha = r["accepted"] / max(r["accepted"] + r["refused"], 1)  # per checked guess: the chance one is kept
        g = r["gamma"]
        expected = g + 1 if alpha == 1 else (1 - alpha ** (g + 1)) / (1 - alpha)
        mode = "贪心" if r["greedy"] else f"采样（温度 {results['temperature']:g}）"
        rows.append([mode, g, r["proposed"], r["accepted"], f"{r['accepted'] / r['proposed']:.3f}", f"{alpha:.3f}",
                     f"{r['new_tokens'] / r['target_forwards']:.2f}", f"{expected:.2f}",
                     f"{r['target_forwards'] / r['new_tokens']:.3f}",
                     "—" if r["same_as_greedy"] is None else f"{r['same_as_greedy']}/{results['prompts']}"])
    return markdown_table(["模式", "γ", "草稿词元", "被接受", "接受率（接受/草稿）", "α（接受/检验）",
                           "每次目标前向的词元", "公式 (1−α^(γ+1))/(1−α)", "每个词元的目标前向",
                           "与目标模型单独贪心解码逐词元相同"], rows, "lrrrrrrrrr")


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
    "context": Command(context, ContextRun, "read past the trained context: RoPE extrapolated, interpolated or NTK",
                       examples=("llmpath llama context", "llmpath llama context --factors=1,2,4 --finetune_steps=0")),
    "speculative": Command(speculative, SpeculativeRun, "speculative decoding: a 1-layer draft, the model verifies",
                           examples=("llmpath llama speculative", "llmpath llama speculative --gammas=2,4")),
}
