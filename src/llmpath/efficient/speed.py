"""What a step costs on a CPU: torch.compile against eager, and one torch thread against two. Measurements only.

    rows = compile_rows(rounds=3)        # stage 5's small GPT: a training step and greedy generation
    rows = thread_rows((1, 2))           # a training step of the small GPT and of stage 7's small ViT
    print(compile_table(rows))

torch.compile traces the model's Python into a graph and has inductor write fused C++ kernels for it (a
C++ compiler must be on the PATH); the first call pays for that, later calls reuse the kernels. Every
variant is timed in the same process in interleaved rounds (A B, A B, ...), so that load from other
processes hits them alike, and the median of the rounds is kept: the ratios mean more than the
milliseconds. A variant that fails (no compiler, an unsupported operation) becomes a row that says why.
benchmarks/bench_compile.py prints both tables.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
from torch import nn

from llmpath.common import interleaved_times, markdown_table
from llmpath.generation import generate
from llmpath.gpt.finetune import lm_loss
from llmpath.gpt.model import MODEL_PRESETS, GPT, GPTConfig

VOCAB = 79  # stage 5's character vocabulary of shakespeare


def small_gpt(seed: int = 0) -> GPT:
    """Stage 5's `small` shape (4 layers, 4 heads, 128 wide, context 64), random weights."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, **MODEL_PRESETS["small"]))


def train_step(model: nn.Module, loss_fn: Callable, batch: tuple, params: nn.Module | None = None) -> Callable[[], None]:
    """A closure doing one step: forward, loss, backward, AdamW (on `params`' weights: the eager model under a
    compiled wrapper)."""
    model.train()
    opt = torch.optim.AdamW((params or model).parameters(), lr=1e-4, weight_decay=0.1)

    def step() -> None:
        loss_fn(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each function over `rounds` interleaved rounds of `calls` calls each."""
    return {k: statistics.median(t) for k, t in interleaved_times(fns, rounds, calls, warmup=0).items()}


def first_call(fn: Callable[[], object]) -> tuple[float, str]:
    """(seconds of the first call, '' or the one-line reason it failed)."""
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (a measurement: any failure becomes a row, never a crash)
        lines = str(e).strip().splitlines()
        return time.perf_counter() - t0, f"{type(e).__name__}: {lines[0][:160] if lines else ''}"
    return time.perf_counter() - t0, ""


def _batch(batch_size: int, block: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (batch_size, block + 1), generator=torch.Generator().manual_seed(seed))
    return ids[:, :-1], ids[:, 1:]  # (B, T) each


def compile_rows(rounds: int = 3, calls: int = 10, batch_size: int = 16, new_tokens: int = 128,
                 threads: int = 1) -> list[dict]:
    """Eager vs torch.compile for a training step (batch x 64 tokens) and for greedy generation with the KV
    cache (1 newline + new_tokens): first-call seconds, steady ms per call, time / eager, same output."""
    torch.set_num_threads(threads)
    rows = []
    eager = small_gpt()
    compiled_base = copy.deepcopy(eager)  # the same weights; compiled separately so the two never share state
    compiled = torch.compile(compiled_base)
    batch = _batch(batch_size, eager.cfg.block_size)
    what = f"训练一步（batch {batch_size} x {eager.cfg.block_size} 词元，AdamW）"
    steps = {"eager": train_step(eager, lm_loss, batch), "torch.compile": train_step(compiled, lm_loss, batch,
                                                                                    params=compiled_base)}
    rows += _measure(what, steps, rounds, calls, unit="ms/步")
    eager.eval(), compiled_base.eval()
    eager.load_state_dict(compiled_base.state_dict())  # both trained the same steps; equal again for the check
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def gen(m: nn.Module) -> Callable[[], torch.Tensor]:
        # generate() reads model.cfg and parameters; a compiled module passes both through to the original
        return lambda: generate(m, prompt, new_tokens, greedy=True)

    what = f"贪心生成 {new_tokens} 个词元（KV 缓存，batch 1）"
    rows += _measure(what, {"eager": gen(eager), "torch.compile": gen(compiled)}, rounds, 1, unit="ms/次",
                     same=lambda outs: torch.equal(*outs))
    return rows


def _measure(what: str, fns: dict, rounds: int, calls: int, unit: str, same: Callable | None = None) -> list[dict]:
    """First call (compiling, for a compiled function) then interleaved steady rounds; failures become reasons."""
    firsts, errors, outs = {}, {}, {}
    for k, fn in fns.items():
        holder = {}
        firsts[k], errors[k] = first_call(lambda fn=fn, holder=holder: holder.setdefault("out", fn()))
        outs[k] = holder.get("out")
    ok = {k: fn for k, fn in fns.items() if not errors[k]}
    for fn in ok.values():
        fn()  # a second warm-up: a compiled function may still recompile once (a new shape, the optimizer state)
    steady = interleaved(ok, rounds, calls) if ok else {}
    base = steady.get("eager")
    agree = None
    if same is not None and all(outs[k] is not None for k in fns):
        agree = bool(same(list(outs.values())))
    rows = []
    for k in fns:
        s = steady.get(k)
        rows.append({"what": what, "mode": k, "unit": unit, "first_call_s": round(firsts[k], 2),
                     "ms": None if s is None else round(1e3 * s, 2),
                     "vs_eager": None if s is None or base is None else round(s / base, 3),
                     "same_output": agree, "error": errors[k], "rounds": rounds, "calls": calls})
    return rows


def compile_table(rows: list[dict]) -> str:
    def cell(v, fmt):
        return "—" if v is None else format(v, fmt)

    body = [[r["what"], r["mode"], cell(r["first_call_s"], ".1f"), f"{cell(r['ms'], '.1f')} {r['unit']}",
             cell(r["vs_eager"], ".2f") + ("x" if r["vs_eager"] is not None else ""),
             {True: "是", False: "否", None: "—"}[r["same_output"]], r["error"] or ""] for r in rows]
    return markdown_table(["测什么", "方式", "第一次调用（秒，含编译）", "稳定后", "相对 eager", "输出相同", "失败原因"],
                          body, "llrrrll")


# ---------------------------------------------------------------------------------- threads

def _vit_step() -> tuple[str, Callable[[], None]]:
    """Stage 8's small ViT (4 layers, 64 wide, 7 x 7 patches of 28 x 28 images), batch 64."""
    from llmpath.vit.model import ViT, ViTConfig, classification_loss

    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=28, patch_size=7, n_layer=4, n_head=4, n_embd=64, n_ff=128))
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    return "ViT 训练一步（第 7 章 small：4 层、64 宽，batch 64 张 28x28）", train_step(model, classification_loss, batch)


def thread_rows(threads: tuple[int, ...] = (1, 2), rounds: int = 3, calls: int = 10, vit: bool = True) -> list[dict]:
    """ms per training step at each thread count, interleaved (1, 2, 1, 2, ...) in one process; speed-up vs the first."""
    before = torch.get_num_threads()
    gpt = small_gpt()
    cases = [(f"GPT 训练一步（第 5 章 small：4 层、128 宽，batch 16 x 64 词元）", train_step(gpt, lm_loss, _batch(16, 64)))]
    if vit:
        cases.append(_vit_step())
    rows = []
    try:
        for what, step in cases:
            fns = {}
            for n in threads:
                def fn(n=n) -> None:
                    torch.set_num_threads(n)
                    step()
                fns[n] = fn
            for fn in fns.values():
                fn()  # warm-up at every thread count
            steady = interleaved(fns, rounds, calls)
            base = steady[threads[0]]
            rows += [{"what": what, "threads": n, "ms": round(1e3 * s, 2), "speedup": round(base / s, 2),
                      "rounds": rounds, "calls": calls} for n, s in steady.items()]
    finally:
        torch.set_num_threads(before)
    return rows


def thread_table(rows: list[dict]) -> str:
    body = [[r["what"], r["threads"], f"{r['ms']:.1f}", f"{r['speedup']:.2f}x"] for r in rows]
    return markdown_table(["测什么", "torch 线程数", "ms/步", f"相对 {rows[0]['threads']} 个线程的加速"], body, "lrrr")
