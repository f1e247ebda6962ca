"""`llmpath chat ...`: your own small chat model, from a base model to a conversation in the terminal.

    llmpath chat pretrain                        # BPE + a Llama-style base model on the course's zh/en text
    llmpath chat sft                             # instruction tuning of that base model (runs/chat/small-sft)
    llmpath chat compare --workers=2             # per task: base few-shot vs SFT vs SFT without loss masking
    llmpath chat chat                            # talk to runs/chat/small-sft (/reset, /system <text>, /exit)
    llmpath chat chat --say="1+1等于多少？"        # one answer, printed, no prompt loop
    llmpath chat data                            # the data card: examples per task and split

    llmpath chat rm                              # a reward model on preference pairs (runs/chat/small-rm)
    llmpath chat ppo                             # RLHF: PPO against that reward model (runs/chat/small-ppo)
    llmpath chat dpo                             # DPO on the same pairs (runs/chat/small-dpo)
    llmpath chat grpo                            # GRPO on the checkable tasks (runs/chat/small-grpo)
    llmpath chat align --workers=2               # all four, then SFT vs PPO vs DPO vs GRPO per task, both judges
    llmpath chat pairs                           # the preference pairs: how many per kind and split

`--preset=base` trains the larger base model the tutorial's transcripts come from (runs/chat/base, base-sft).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from llmpath.chat.base import PRESETS, BaseRun, mixture_table, pretrain_base
from llmpath.chat.data import build_examples, data_card_table
from llmpath.chat.align import align, align_checks, align_table
from llmpath.chat.dpo import DPO_PRESETS, DPORun, run_dpo
from llmpath.chat.finetune import SFT_PRESETS, SFTRun, compare, compare_table, run_sft
from llmpath.chat.grpo import GRPO_PRESETS, GRPORun, run_grpo
from llmpath.chat.ppo import PPO_PRESETS, PPORun, run_ppo
from llmpath.chat.preferences import pair_card_table
from llmpath.chat.reward import ALIGN_PRESETS, RM_PRESETS, AlignRun, RewardRun, run_rm
from llmpath.chat.repl import ChatSession, decode_pieces, run_repl
from llmpath.common import set_threads, setup_logging, write_json
from llmpath.config import Command, ConfigError, RunConfig, opt
from llmpath.runs import finished, load_run
from llmpath.tour import StageResult

TOPIC = "chat"


def pretrain(cfg: BaseRun) -> dict:
    """The base model: BPE and a Llama-style decoder on the mixture."""
    summary = pretrain_base(cfg)
    if summary:  # under torchrun only rank 0 has one
        print(mixture_table(summary))
    return summary


def sft(cfg: SFTRun) -> dict:
    """Instruction tuning of the base run."""
    return run_sft(cfg)


@dataclass
class CompareChat(SFTRun):
    workers: int = opt(1, "columns computed side by side, one process each (use 2 on 2 cores, with --threads=1)",
                       min=1, result=False)


def compare_cmd(cfg: CompareChat) -> dict:
    """Base few-shot vs SFT vs SFT without loss masking (and the earlier stages' models), task by task."""
    done = compare(cfg, cfg.workers)
    table = compare_table(done, done["baselines"])
    folder = Path(cfg.out) / TOPIC / f"{cfg.preset or 'custom'}-compare"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {folder}: {e.strerror or e}; choose another --out") from None
    write_json(folder / "results.json", {"table": table, "base": done["base"], "baselines": done["baselines"]})
    (folder / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return {"table": table, **done}


@dataclass
class ChatRun(RunConfig):
    run: str = opt("", "the chat run folder (default <out>/chat/<preset>-sft)", result=False)
    system: str = opt("", "system message (empty: none)")
    say: str = opt("", "one message to answer and exit (else an interactive session)")
    temperature: float = opt(0.7, "sampling temperature (0 = greedy)", min=0)
    top_k: int = opt(50, "sample among the k most likely tokens (0 = all)", min=0)
    max_new_tokens: int = opt(200, "tokens an answer may take at most", min=1)


def chat(cfg: ChatRun) -> list[str]:
    """A conversation with a trained chat model in the terminal (or one answer with --say)."""
    setup_logging()
    path = cfg.run or os.path.join(cfg.out, TOPIC, f"{cfg.preset or 'small'}-sft")
    model, tok, _ = load_run(path, topic=TOPIC, hint=f"llmpath chat sft --preset={cfg.preset or 'small'}")
    set_threads(cfg.threads)  # --threads, or the preset's (1)
    session = ChatSession(model, tok, system=cfg.system, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, top_k=cfg.top_k or None, seed=cfg.seed)
    if cfg.say:
        answer = "".join(session.reply(cfg.say))
        print(answer)
        return [answer]
    run_repl(session)
    return [m["content"] for m in session.messages if m["role"] == "assistant"]


def data(cfg: SFTRun) -> str:
    """The data card of the instruction examples (caps from the preset)."""
    table = data_card_table(build_examples(cfg.seed, cfg.max_per_task, cfg.max_eval))
    print(table)
    return table


def rm(cfg: RewardRun) -> dict:
    """The reward model: Bradley-Terry on the preference pairs, from the SFT run."""
    return run_rm(cfg)


def ppo(cfg: PPORun) -> dict:
    """RLHF with PPO on 写一条好评 against the reward model, judged again by stage 1's classifier."""
    return run_ppo(cfg)


def dpo(cfg: DPORun) -> dict:
    """DPO on the preference pairs, from the SFT run."""
    return run_dpo(cfg)


def grpo(cfg: GRPORun) -> dict:
    """GRPO with verifiable rewards on the tasks whose answers a program checks (arithmetic, idioms, sentiment)."""
    return run_grpo(cfg)


@dataclass
class AlignChain(PPORun):
    workers: int = opt(1, "runs side by side, one process each (use 2 on 2 cores, with --threads=1)", min=1,
                       result=False)


def align_cmd(cfg: AlignChain) -> dict:
    """The reward model, DPO, PPO and GRPO from the SFT run, then the table: SFT vs PPO vs DPO vs GRPO."""
    args = [f"--preset={cfg.preset or 'small'}", f"--out={cfg.out}", f"--seed={cfg.seed}", f"--fresh={cfg.fresh}",
            "--threads=1" if cfg.workers > 1 else f"--threads={cfg.threads}"]
    done = align(args, cfg.workers)
    table = align_table(done)
    folder = Path(cfg.out) / TOPIC / f"{cfg.preset or 'custom'}-align"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {folder}: {e.strerror or e}; choose another --out") from None
    write_json(folder / "results.json", {"table": table, "columns": done["columns"]})
    (folder / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return {"table": table, **done}


def pairs(cfg: AlignRun) -> str:
    """The preference pairs per kind and split (caps from the preset)."""
    table = pair_card_table(cfg.pairs())
    print(table)
    return table


# ---------------------------------------------------------------------------------------------- tour

# response loss drop below the base's (nats/token); % of answers ending with <|im_end|>; the least gain in
# arithmetic exact and idiom validity over the base few-shot (percentage points)
BARS = {"tiny": (0.0, 0.0, -100.0), "small": (0.5, 90.0, 10.0)}


def pretrain_ddp(args: list[str], processes: int) -> None:
    """`llmpath chat pretrain` under torchrun: `processes` ranks of one 1/processes of each batch (llmpath.train),
    so the same run trains in about 1/processes of the time on as many cores."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "llmpath", "chat", "pretrain", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise ConfigError((errors[0][len("error: "):] if errors else f"torchrun exited with {done.returncode}") +
                          f" (in: {' '.join(cmd[2:])})")


def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 11 of `llmpath tour`: the base model, SFT with and without loss masking, the per-task table; then the
    reward model, DPO, PPO and GRPO from that SFT run, and the table of all of them with both judges."""
    from llmpath.config import build_config

    args = [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}", "--threads=1"]
    base_cfg = build_config(BaseRun, args, PRESETS)
    cores = min(2, os.cpu_count() or 1)
    if cores > 1 and (fresh or finished(base_cfg, TOPIC) is None):
        pretrain_ddp(args, cores)  # the base model data-parallel on every core; its summary is read back below
        base_cfg.fresh = False
    base = pretrain_base(base_cfg)
    cfg = build_config(CompareChat, [*args, f"--workers={cores}"], SFT_PRESETS)
    done = compare_cmd(cfg)
    drop_bar, end_bar, gain_bar = BARS.get(preset, BARS["small"])
    s, b = done["sft"], done["base"]
    drop = b["response_loss"] - s["response_loss"]
    gains = {t: s["tasks"][t][k] - b["tasks"][t][k] for t, k in (("arithmetic", "exact"), ("idiom-chain", "valid"))}
    passed = (drop >= drop_bar and s["ended"] >= end_bar and s["role_tokens"] == 0
              and all(g >= gain_bar for g in gains.values()))
    bar = (f"SFT response loss >= {drop_bar} nats/token below the base model's, >= {end_bar:.0f}% of answers end with "
           f"<|im_end|> and none writes a role token, arithmetic and idiom chain >= {gain_bar:.0f} points above "
           f"the base model prompted with examples")
    shown = "\n\n".join(f"**{t}**：{json.dumps(x['prompt'][-1]['content'], ensure_ascii=False)} → "
                        f"{json.dumps(x['answer'], ensure_ascii=False)}"
                        for t, xs in s["transcripts"].items() for x in xs[:1])
    table = (mixture_table(base) + "\n\n" + done["table"] +
             f"\n\n回答损失下降 {drop:.3f} nats/token；算术 {gains['arithmetic']:+.1f}、成语接龙 "
             f"{gains['idiom-chain']:+.1f} 个百分点（SFT − 基座少样本）\n\n" + shown)
    # part 2: the reward model and DPO, then PPO and GRPO, from the SFT run just made; then the table of all four
    # (tiny runs take seconds: new worker processes would cost more than they save)
    chain = align_cmd(build_config(AlignChain, [*args, f"--workers={1 if preset == 'tiny' else cores}"], PPO_PRESETS))
    checks = align_checks(chain, preset)
    ppo_after = chain["ppo"]["after"]
    table += ("\n\n" + chain["table"] + "\n\n" + "\n".join(f"- {'✓' if ok else '✗'} {k}" for k, ok in checks.items())
              + "\n\nPPO 之后的回答（写一条好评）：" + " / ".join(json.dumps(x, ensure_ascii=False)
                                                     for x in ppo_after["samples"][:3]))
    passed = passed and all(checks.values())
    bar += "; then the alignment bars: " + "; ".join(checks)
    figures = [*base.get("figures", []), *s.get("figures", [])]
    figures += [f for k in ("rm", "dpo", "ppo", "grpo") for f in chain[k].get("figures", [])]
    return StageResult("response loss after SFT (nats/token)", s["response_loss"], bar, passed, table, figures)


def smoke() -> str:
    """Doctor check: the chat template's mask marks exactly the answer, and a tiny model's SFT loss is a positive number."""
    from llmpath.chat.sft import collate, encode_examples, sft_loss
    from llmpath.llama.model import Llama, LlamaConfig
    from llmpath.tokenizers import train_gpt_tokenizer

    tok = train_gpt_tokenizer("你好 hello 1+1=2 " * 20, vocab_size=300)
    msgs = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    ((ids, mask),) = encode_examples(tok, [msgs], block_size=64)
    if "".join(decode_pieces(tok, [t for t, m in zip(ids, mask) if m][:-1])) != "2":
        raise RuntimeError("the loss mask does not mark exactly the answer")
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    other = [{"role": "user", "content": "2+2="}, msgs[1]]
    a = sft_loss(model, collate(encode_examples(tok, [msgs], 64), 0))
    b = sft_loss(model, collate(encode_examples(tok, [other], 64), 0))
    if not torch.isfinite(a) or a.item() <= 0 or len(encode_examples(tok, [other], 64)[0][0]) != len(ids):
        raise RuntimeError("the SFT loss of a tiny model is not a positive number")
    return f"chat template ok (mask marks the answer; SFT loss {a.item():.2f} / {b.item():.2f} nats)"


COMMANDS = {
    "pretrain": Command(pretrain, BaseRun, "the base model: BPE + a Llama-style decoder on the zh/en mixture",
                        examples=("llmpath chat pretrain", "llmpath chat pretrain --preset=base",
                                  "llmpath chat pretrain --weights=hsk=4,chatterbot=2,shakespeare=0.5 --name=less-en")),
    "sft": Command(sft, SFTRun, "instruction tuning of the base run (loss on the answers only)",
                   examples=("llmpath chat sft", "llmpath chat sft --mask_everything=true",
                             "llmpath chat sft --pack=true", "llmpath chat sft --init_from=runs/chat/less-en "
                             "--name=less-en-sft"), presets=SFT_PRESETS),
    "compare": Command(compare_cmd, CompareChat, "per task: base few-shot vs SFT vs SFT without loss masking",
                       examples=("llmpath chat compare --workers=2",), presets=SFT_PRESETS),
    "chat": Command(chat, ChatRun, "talk to a trained chat model (/reset, /system <text>, /exit)",
                    examples=("llmpath chat chat", "llmpath chat chat --preset=base --temperature=0",
                              'llmpath chat chat --say="把下面的句子翻译成英文：\\n我很好。"'),
                    presets={name: {"threads": 1} for name in SFT_PRESETS}),
    "data": Command(data, SFTRun, "the data card: instruction examples per task and split",
                    examples=("llmpath chat data", "llmpath chat data --max_per_task=100000 --max_eval=100000"),
                    presets=SFT_PRESETS),
    "rm": Command(rm, RewardRun, "a reward model (Bradley-Terry) on the preference pairs, from the SFT run",
                  examples=("llmpath chat rm", "llmpath chat rm --margin=0.5 --name=small-rm-margin"),
                  presets=RM_PRESETS),
    "ppo": Command(ppo, PPORun, "RLHF: PPO on 写一条好评 against the reward model, with an independent judge",
                   examples=("llmpath chat ppo", "llmpath chat ppo --kl_target=0.2 --name=small-ppo-adaptive"),
                   presets=PPO_PRESETS),
    "dpo": Command(dpo, DPORun, "DPO on the preference pairs, from the SFT run",
                   examples=("llmpath chat dpo", "llmpath chat dpo --beta=0.5 --name=small-dpo-b05"),
                   presets=DPO_PRESETS),
    "grpo": Command(grpo, GRPORun, "GRPO with verifiable rewards: arithmetic, the idiom chain, sentiment labels",
                    examples=("llmpath chat grpo", "llmpath chat grpo --tasks=arithmetic --group_size=16"),
                    presets=GRPO_PRESETS),
    "align": Command(align_cmd, AlignChain, "reward model, PPO, DPO and GRPO, then the table of all four and SFT",
                     examples=("llmpath chat align --workers=2",), presets=PPO_PRESETS),
    "pairs": Command(pairs, AlignRun, "the preference pairs: how many per kind and split",
                     examples=("llmpath chat pairs",), presets=ALIGN_PRESETS),
}
