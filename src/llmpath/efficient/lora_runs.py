"""LoRA against full finetuning: stage 5's GPT (and stage 9's Llama-style model) move to everyday English.

    done = lora_compare(cfg)       # for each pretrained model: full finetuning, then LoRA at r = 2, 4, 8, 16
    print(lora_table(done))

Every row is stage 5's `llmpath gpt finetune --target hsk-pairs`: the pretrained char-level Shakespeare
model goes on training on the English side of hsk-pairs with the same split, validation loss, steps,
schedule and batches, through the same `pretrain` (and so the shared fit). The rows differ only in what
trains (every weight, or the adapters B A of the attention projections at rank r, lora.py) and in the peak
learning rate: adapters start at zero and take a larger one (`lr_sweep` measures it); alpha is fixed, so
the LoRA rows share one recipe whatever r is. Each row is a run folder <out>/efficient/<name>-lora-<model>-<full|rN>
with the weights it would take to ship the result (model.safetensors, or adapter.safetensors alone);
the table is the results.json of <name>-lora-compare.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model

from llmpath.common import log, markdown_table, setup_logging, write_json
from llmpath.config import ConfigError, TrainConfig, opt, sub
from llmpath.efficient.lora import DEFAULT_TARGETS, apply_lora, lora_state_dict, trainable_params
from llmpath.gpt.model import GPT
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import GPTRun, LMRun, pretrain
from llmpath.llama.experiments import LlamaRun
from llmpath.llama.model import Llama
from llmpath.runs import load_run, open_folder, run_path

TOPIC = "efficient"


@dataclass
class LoRAConfig:
    r: int = opt(8, "rank of the update B A (0 = no adapters: finetune every weight)", min=0)
    alpha: float = opt(16.0, "the update is scaled by alpha / r", above=0)
    dropout: float = opt(0.0, "dropout on the adapters' input", min=0, below=1)
    targets: tuple[str, ...] = opt(DEFAULT_TARGETS, "name endings of the nn.Linear layers to adapt (comma-separated)")


@dataclass
class GPTLoRARun(GPTRun):
    """One row: finetuning from the GPT run in init_from, with adapters when lora.r > 0."""

    lora: LoRAConfig = sub(LoRAConfig)


@dataclass
class LlamaLoRARun(LlamaRun):
    """One row: finetuning from the Llama-style run in init_from, with adapters when lora.r > 0."""

    lora: LoRAConfig = sub(LoRAConfig)


@dataclass
class LoRACompare(GPTRun):
    """Stage 5's run config (its preset names the pretrained run) plus the finetuning and LoRA options."""

    target: str = opt("hsk-pairs", "second-domain text (a pairs set gives its English side)")
    pretrained: str = opt("", "pretrained GPT run folder (default: <out>/gpt/<preset>)")
    llama: str = opt("", "pretrained Llama-style run folder (default: <out>/llama/<preset>-llama, skipped when "
                         "missing; 'none' = GPT only)")
    ft_steps: int = opt(300, "optimizer steps of every finetuning run", min=1)
    ft_lr: float = opt(1e-3, "peak learning rate of full finetuning (stage 5's)", above=0)
    lora_lr: float = opt(1e-2, "peak learning rate of the LoRA rows", above=0)
    ranks: tuple[int, ...] = opt((2, 4, 8, 16), "LoRA ranks to compare (comma-separated)")
    lora: LoRAConfig = sub(LoRAConfig)  # alpha, dropout and targets; r comes from --ranks


PRESETS: dict[str, dict] = {"tiny": {**GPT_PRESETS["tiny"], "ft_steps": 30}, "small": dict(GPT_PRESETS["small"])}


def finetune_train(cfg: LoRACompare, lr: float) -> TrainConfig:
    """Stage 5's finetuning schedule (as `llmpath gpt finetune`): ft_steps, short warmup, three evaluations."""
    return replace(cfg.train, max_steps=cfg.ft_steps, lr=lr, eval_interval=max(cfg.ft_steps // 3, 1),
                   warmup_steps=min(cfg.train.warmup_steps, cfg.ft_steps // 10))


def sources(cfg: LoRACompare) -> dict[str, tuple[Path, object]]:
    """{"gpt": (folder, its config), "llama": ...}: the pretrained runs, loaded once so a missing one fails first."""
    preset = cfg.preset or "small"
    gpt = Path(cfg.pretrained or Path(cfg.out) / "gpt" / preset)
    out = {"gpt": (gpt, load_run(gpt, topic="gpt", hint=f"llmpath gpt train --preset={preset} --out={cfg.out}").cfg)}
    llama = Path(cfg.llama or Path(cfg.out) / "llama" / f"{preset}-llama")
    if cfg.llama != "none" and (cfg.llama or (llama / "ckpt").exists()):
        hint = f"llmpath llama compare --preset={preset} --out={cfg.out}"  # its Llama-style row is <preset>-llama
        out["llama"] = (llama, load_run(llama, topic="llama", hint=hint).cfg)
    elif cfg.llama != "none":
        log.info(f"no Llama-style run in {llama}: the table has GPT rows only")
    return out


def row_config(cfg: LoRACompare, model: str, src: Path, pre_cfg, r: int, lr: float,
               tag: str = "") -> GPTLoRARun | LlamaLoRARun:
    """The run of one row: cfg's shared options, the pretrained run's shape, finetuning data and schedule."""
    cls = GPTLoRARun if model == "gpt" else LlamaLoRARun
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LMRun)}
    name = f"{cfg.name or cfg.preset or 'small'}-lora-{model}-{f'r{r}' if r else 'full'}{tag}"
    return cls(**{**shared, "name": name, "data": cfg.target, "init_from": str(src)}, model=replace(pre_cfg.model),
               train=finetune_train(cfg, lr), lora=replace(cfg.lora, r=r))


def lora_run(cfg: GPTLoRARun | LlamaLoRARun) -> dict:
    """Finetune one row (or reuse it when finished): val loss before and after, trainable share, file size."""
    topic, build = ("gpt", GPT) if isinstance(cfg, GPTLoRARun) else ("llama", Llama)  # where the pretrained run is
    lora = cfg.lora

    def load(src, device, dropout=0.0):
        model, tok, _ = load_run(src, device, dropout=dropout, topic=topic)
        if lora.r:
            torch.manual_seed(cfg.seed)  # A's random start is part of the run (pretrain seeds only after loading)
            apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.targets)
        return model, tok

    def summarize(model) -> dict:
        trainable, total = trainable_params(model)
        path = run_path(cfg, TOPIC) / ("adapter.safetensors" if lora.r else "model.safetensors")
        if lora.r:
            save_file(lora_state_dict(model), path)  # all that has to ship besides the shared base model
        else:
            save_model(model, path)  # every weight (the tied head once)
        return {"model": topic, "r": lora.r, "alpha": lora.alpha, "lr": cfg.train.lr, "trainable_params": trainable,
                "total_params": total, "trainable_share": trainable / total, "file_bytes": path.stat().st_size}

    title = f"{'GPT' if topic == 'gpt' else 'Llama'} {'LoRA r=' + str(lora.r) if lora.r else '全量微调'}"
    return pretrain(cfg, TOPIC, build, load_init=load, title=title, summarize=summarize)


def lora_configs(cfg: LoRACompare) -> dict[str, GPTLoRARun | LlamaLoRARun]:
    """Every row: {"gpt-full": ..., "gpt-r2": ..., ..., "llama-r16": ...}."""
    if any(r < 1 for r in cfg.ranks) or not cfg.ranks:
        raise ConfigError(f"--ranks must be ranks of at least 1, e.g. 2,4,8,16; got {','.join(map(str, cfg.ranks))}")
    rows = {}
    for model, (src, pre_cfg) in sources(cfg).items():
        rows[f"{model}-full"] = row_config(cfg, model, src, pre_cfg, 0, cfg.ft_lr)
        for r in cfg.ranks:
            rows[f"{model}-r{r}"] = row_config(cfg, model, src, pre_cfg, r, cfg.lora_lr)
    return rows


def lora_compare(cfg: LoRACompare) -> dict:
    """Train (or reuse) every row; the rows by key, also written to <out>/efficient/<name>-lora-compare."""
    setup_logging()
    done = {key: lora_run(c) for key, c in lora_configs(cfg).items()}
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-lora-compare"), TOPIC)
    write_json(out / "results.json", done)
    return done


def lr_sweep(cfg: LoRACompare, lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2), model: str = "gpt") -> dict:
    """LoRA at rank cfg.lora.r with each peak lr (runs <name>-lora-<model>-r<r>-lr<lr>): which lr to use."""
    setup_logging()
    src, pre_cfg = sources(replace(cfg, llama=cfg.llama if model == "llama" else "none"))[model]
    return {f"{model}-r{cfg.lora.r}-lr{lr:g}": lora_run(row_config(cfg, model, src, pre_cfg, cfg.lora.r, lr,
                                                                    f"-lr{lr:g}")) for lr in lrs}


def lora_table(done: dict) -> str:
    """One row per run: method, lr, trainable parameters and share, file to ship, val loss before -> after, seconds."""
    rows = []
    for r in done.values():
        method = f"LoRA r={r['r']}" if r["r"] else "全量微调"
        rows.append(["GPT" if r["model"] == "gpt" else "Llama 式", method, f"{r['lr']:g}",
                     f"{r['trainable_params']:,}", f"{r['trainable_share']:.2%}", f"{r['file_bytes']:,}",
                     f"{r['before']['val_loss']:.4f}", f"{r['val_loss']:.4f}", f"{r['seconds']:.0f}"])
    return markdown_table(["模型", "方法", "峰值学习率", "可训练参数", "占全部参数", "要保存的文件（字节）",
                           "微调前验证损失", "微调后验证损失", "秒"], rows, "llrrrrrrr")
