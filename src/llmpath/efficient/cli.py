"""`llmpath efficient ...`: making a trained decoder cheaper to finetune, store and run.

    llmpath efficient lora --workers=2           # full finetuning vs LoRA r = 2, 4, 8, 16 (GPT and Llama-style) on hsk-pairs
    llmpath efficient lora-lr                    # which peak learning rate LoRA wants (r = 8, GPT)
    llmpath efficient quantize                   # fp32 / int8 / int4 (group 32, 64, 128) / 2-bit: bytes, val loss, speed
    llmpath efficient distill --workers=2        # a quarter-size student: labels alone vs forward vs reverse KL
    llmpath efficient speed                      # torch.compile vs eager, 1 vs 2 threads
    llmpath efficient figures                    # LoRA, quantization grid, temperature, KL direction

Every command starts from stage 5's pretrained GPT (<out>/gpt/<preset>; `llmpath gpt train`) and, where it
exists, stage 9's Llama-style model (<out>/llama/<preset>-llama; `llmpath llama compare`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from llmpath.common import log, map_processes, markdown_table, setup_logging, write_json
from llmpath.config import Command, ConfigError, RunConfig, build_config, opt
from llmpath.efficient.distill import PRESETS as DISTILL_PRESETS
from llmpath.efficient.distill import (DistillRun, distill_compare, distill_configs, distill_run, distill_table,
                                      load_teacher)
from llmpath.efficient.lora import apply_lora, merge_lora
from llmpath.efficient.lora_runs import PRESETS as LORA_PRESETS
from llmpath.efficient.lora_runs import LoRACompare, lora_configs, lora_run, lora_table, lr_sweep
from llmpath.efficient.quant import quantize
from llmpath.runs import open_folder
from llmpath.tour import StageResult

TOPIC = "efficient"
PRESETS: dict[str, dict] = {"tiny": {"threads": 1}, "small": {"threads": 1}}


def _train_row(cfg):
    """One run of any table (a module-level function, so that rows can train in parallel processes)."""
    return distill_run(cfg) if isinstance(cfg, DistillRun) else lora_run(cfg)


def _tour_task(task):
    """The tour's jobs, side by side: a training row, or ("quantize", run folder) for the quantization bars."""
    if isinstance(task, tuple):
        from llmpath.efficient.quant_eval import SETTINGS, quant_table

        return quant_table(task[1], rounds=1, peers=False, settings=SETTINGS[:3])  # fp32, int8, int4 group 32
    return _train_row(task)


def _check_workers(workers: int) -> int:
    if workers < 1:
        raise ConfigError(f"--workers={workers} must be at least 1 (use 2 on a 2-core machine, with --threads=1)")
    return workers


# --------------------------------------------------------------------------------- lora

@dataclass
class LoRARun(LoRACompare):
    workers: int = opt(1, "rows trained side by side, one process each (use with --threads=1)", min=1, result=False)


def check_lora(configs: dict) -> None:
    """Refuse targets that match no layer (or a bad rank) in the parent, before any row trains."""
    from llmpath.efficient.lora_runs import GPTLoRARun
    from llmpath.gpt.model import GPT
    from llmpath.llama.model import Llama

    for c in configs.values():
        if c.lora.r:
            build = GPT if isinstance(c, GPTLoRARun) else Llama
            try:
                apply_lora(build(replace(c.model, vocab_size=c.model.vocab_size or 8)), c.lora.r, c.lora.alpha,
                           c.lora.dropout, c.lora.targets)
            except ValueError as e:
                raise ConfigError(f"--lora.targets / --ranks: {e}") from None


def lora(cfg: LoRARun) -> dict:
    """Full finetuning vs LoRA at each rank, for stage 5's GPT (and stage 9's Llama-style model when trained)."""
    setup_logging()
    configs = lora_configs(cfg)  # loads the pretrained runs first: a missing one is one line saying how to train it
    check_lora(configs)
    done = dict(zip(configs, map_processes(_train_row, list(configs.values()), _check_workers(cfg.workers))))
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-lora-compare"), TOPIC)
    write_json(out / "results.json", done)
    print(lora_table(done))
    return done


def lora_lr(cfg: LoRACompare) -> dict:
    """LoRA at rank --lora.r (default 8) on stage 5's GPT with peak lr 1e-3, 3e-3, 1e-2, 3e-2."""
    done = lr_sweep(cfg)
    print(lora_table(done))
    return done


# ----------------------------------------------------------------------------- quantize

@dataclass
class QuantRun(RunConfig):
    run: str = opt("", "the pretrained run to quantize ('' = <out>/gpt/<preset> and <out>/llama/<preset>-llama)")
    rounds: int = opt(5, "interleaved timing rounds of generation", min=1)
    peers: bool = opt(True, "also torchao (int8, int4 group 32) and torch's quantize_dynamic, when installed")


def quantize_cmd(cfg: QuantRun) -> dict:
    """fp32, int8 per channel, int4 per group of 32 / 64 / 128 and 2-bit: model bytes, val loss, generation speed."""
    from llmpath.efficient.quant_eval import quant_table

    setup_logging()
    preset = cfg.preset or "small"
    runs = {"run": Path(cfg.run)} if cfg.run else {"gpt": Path(cfg.out) / "gpt" / preset,
                                                   "llama": Path(cfg.out) / "llama" / f"{preset}-llama"}
    missing = [p for p in runs.values() if not (p / "ckpt").exists()]
    if cfg.run and missing or not cfg.run and runs["gpt"] in missing:
        raise ConfigError(f"no trained model in {missing[0]}; train one first: llmpath gpt train --preset={preset} "
                          f"--out={cfg.out} (or point --run at a run folder)")
    done = {}
    for name, path in runs.items():
        if path in missing:
            log.info(f"no Llama-style run in {path}: the table has GPT rows only (llmpath llama compare)")
            continue
        done[name] = quant_table(path, rounds=cfg.rounds, peers=cfg.peers, seed=cfg.seed)
        print(f"\n{done[name]['model']}\n\n{done[name]['markdown']}")
    write_json(open_folder(replace(cfg, name=f"{cfg.name or preset}-quantize"), TOPIC) / "results.json", done)
    return done


# ------------------------------------------------------------------------------ distill

@dataclass
class DistillCompare(DistillRun):
    workers: int = opt(1, "students trained side by side, one process each (use with --threads=1)", min=1,
                       result=False)


def distill(cfg: DistillCompare) -> dict:
    """A student of a quarter of the teacher's size: labels alone vs distilled (forward KL, reverse KL)."""
    setup_logging()
    configs = list(distill_configs(cfg).values())
    load_teacher(cfg)  # a missing or mismatched teacher is one line here, before any worker process starts
    map_processes(_train_row, configs, _check_workers(cfg.workers))  # train in parallel; the compare reuses them
    done = distill_compare(cfg)
    print(distill_table(done))
    return done


# -------------------------------------------------------------------------------- speed

@dataclass
class SpeedRun(RunConfig):
    rounds: int = opt(5, "interleaved timing rounds", min=1)
    compile: bool = opt(True, "time torch.compile against eager (the first call compiles: tens of seconds)")
    warm_cache: bool = opt(False, "let torch.compile reuse kernels an earlier run left on disk (default: a cold compile)")


def speed(cfg: SpeedRun) -> dict:
    """torch.compile vs eager (a training step, greedy generation) and 1 vs 2 torch threads (GPT and ViT steps)."""
    from llmpath.efficient.speed import compile_rows, compile_table, thread_rows, thread_table

    setup_logging()
    done = {"threads": thread_rows((1, 2), rounds=cfg.rounds)}
    print(thread_table(done["threads"]))
    if cfg.compile:
        if not cfg.warm_cache:  # inductor reads this when it compiles: an empty folder, so the first call is cold
            import tempfile

            os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
        done["compile"] = compile_rows(rounds=cfg.rounds)
        print("\n" + compile_table(done["compile"]))
    write_json(open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-speed"), TOPIC) / "results.json", done)
    return done


# ------------------------------------------------------------------------------ figures

def figures(cfg: RunConfig) -> list[Path]:
    """The chapter's idea diagrams; with stage 5's GPT trained, also its temperature and quantization-error figures."""
    from llmpath.efficient.figures import figures as draw

    setup_logging()
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-figures"), TOPIC) / "figures"
    gpt = Path(cfg.out) / "gpt" / (cfg.preset or "small")
    paths = draw(out, gpt if (gpt / "ckpt").exists() else None)
    for p in paths:
        log.info(f"wrote {p}")
    return paths


# --------------------------------------------------------------------------------- tour

# LoRA's share of trainable parameters; val-loss increase of int8 and int4 (group 32); distilled - labels-only
BARS = {"tiny": (0.25, 0.05, 0.2, 0.5), "small": (0.02, 0.005, 0.02, 0.0)}
TOUR_RANK = 4


def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 10 of `llmpath tour`: LoRA vs full finetuning, int8 / int4 quantization, a distilled student."""

    share_bar, int8_bar, int4_bar, distill_bar = BARS.get(preset, BARS["small"])
    args = [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"]
    lcfg = build_config(LoRACompare, [*args, f"--ranks={TOUR_RANK}", "--llama=none"], LORA_PRESETS)
    dcfg = build_config(DistillRun, args, DISTILL_PRESETS)
    # the tutorial's full-finetuning row and the reverse-KL student are left out here, to keep the stage short
    lrows = {k: c for k, c in lora_configs(lcfg).items() if k != "gpt-full"}
    drows = {k: c for k, c in distill_configs(dcfg).items() if k != "reverse"}
    tasks = [drows["forward"], drows["labels"], *lrows.values(), ("quantize", Path(out) / "gpt" / preset)]
    forward, labels, *lora_rows, q = map_processes(_tour_task, tasks, min(2, os.cpu_count() or 1))  # slowest first
    lora_done = dict(zip(lrows, lora_rows))
    distill_done = {"forward": forward, "labels": labels}
    bars = q["bars"]
    r = lora_done[f"gpt-r{TOUR_RANK}"]
    gain = distill_done["forward"]["val_loss"] - distill_done["labels"]["val_loss"]
    checks = [r["trainable_share"] <= share_bar, r["val_loss"] < r["before"]["val_loss"],
              bars["int8 per channel"]["delta"] <= int8_bar, bars["int4 group 32"]["delta"] <= int4_bar,
              gain <= distill_bar]
    bar = (f"LoRA r={TOUR_RANK} trains <= {share_bar:.0%} of the weights and lowers the val loss; int8 val loss "
           f"+<= {int8_bar}, int4 (group 32) +<= {int4_bar}; distilled student <= labels-only + {distill_bar}")
    table = (lora_table(lora_done) + "\n\n" + markdown_table(q["head"], [row for row in q["rows"]]) +
             "\n\n" + distill_table({"labels": distill_done["labels"], "forward": distill_done["forward"]}) +
             f"\n\nLoRA r={TOUR_RANK} 的可训练参数占 {r['trainable_share']:.2%}；int8 验证损失 "
             f"{bars['int8 per channel']['delta']:+.4f}，int4（组长 32）{bars['int4 group 32']['delta']:+.4f}；"
             f"蒸馏的学生 − 只学标签的学生：{gain:+.4f}")
    from llmpath.efficient.figures import lora_figure, quant_grid_figure
    from llmpath.plotting import save_fig

    shown = Path(out) / TOPIC / f"{preset}-figures" / "figures"
    diagrams = [save_fig(lora_figure(), shown / "lora.png"), save_fig(quant_grid_figure(), shown / "quant_grid.png")]
    return StageResult("val loss, distilled student (nats/char)", distill_done["forward"]["val_loss"], bar, all(checks),
                       table, [*map(str, diagrams), *distill_done["forward"].get("figures", [])])


# -------------------------------------------------------------------------------- smoke

def smoke() -> str:
    """Doctor check: LoRA on a tiny GPT starts equal and merges exactly; int8 keeps the logits close."""
    from llmpath.gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    x = torch.randint(0, 11, (2, 8))
    want = base(x)[0]
    adapted = apply_lora(copy.deepcopy(base), r=2)
    for layer in adapted.modules():
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B)  # a trained-looking update, so that merging has work to do
    got = adapted(x)[0]
    if not torch.allclose(merge_lora(adapted)(x)[0], got, atol=1e-5):
        raise RuntimeError("a merged LoRA model differs from the unmerged one")
    if not torch.allclose(apply_lora(copy.deepcopy(base), r=2)(x)[0], want, atol=1e-6):
        raise RuntimeError("LoRA changed the model's output at initialisation")
    if (quantize(copy.deepcopy(base), bits=8)(x)[0] - want).abs().max() > 0.05:
        raise RuntimeError("int8 weight-only quantization moved the logits too far")
    return "tiny GPT ok (LoRA: unchanged at start, merged == unmerged; int8 logits close)"


COMMANDS = {
    "lora": Command(lora, LoRARun, "full finetuning vs LoRA r = 2, 4, 8, 16 on the English side of hsk-pairs",
                    examples=("llmpath efficient lora --workers=2", "llmpath efficient lora --ranks=4 --llama=none",
                              "llmpath efficient lora --lora.targets=attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj "
                              "--name=small-all --llama=none"), presets=LORA_PRESETS),
    "lora-lr": Command(lora_lr, LoRACompare, "LoRA's peak learning rate: 1e-3, 3e-3, 1e-2, 3e-2 at r = 8",
                       examples=("llmpath efficient lora-lr",), presets=LORA_PRESETS),
    "quantize": Command(quantize_cmd, QuantRun, "weight-only int8 / int4 / 2-bit: bytes, val loss, speed, vs torchao",
                        examples=("llmpath efficient quantize", "llmpath efficient quantize --run=runs/gpt/small "
                                  "--peers=false")),
    "distill": Command(distill, DistillCompare, "a quarter-size student: labels alone vs forward vs reverse KL",
                       examples=("llmpath efficient distill --workers=2",
                                 "llmpath efficient distill --temperature=4 --name=small-t4"), presets=DISTILL_PRESETS),
    "speed": Command(speed, SpeedRun, "torch.compile vs eager, 1 vs 2 torch threads (measurements)",
                     examples=("llmpath efficient speed", "llmpath efficient speed --compile=false")),
    "figures": Command(figures, RunConfig, "LoRA, the quantization grid, temperature, forward vs reverse KL",
                       examples=("llmpath efficient figures",)),
}
