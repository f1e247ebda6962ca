"""`llmpath gpt ...`: pretrain, sample, chat, export to Hugging Face, finetune, tour.

    llmpath gpt train                                   # preset small: char-level Shakespeare on a CPU
    torchrun --nproc_per_node=2 -m llmpath gpt train    # the same, data-parallel (gloo on CPU, nccl on GPU)
    llmpath gpt sample --prompt "ROMEO:" --stream --top-p 0.9
    llmpath gpt chat                                    # a REPL; Ctrl-D (end of input) leaves
    llmpath gpt export --dir runs/gpt/small/hf          # GPT2LMHeadModel.from_pretrained(...) reads it
    llmpath gpt classify --task tweets                  # pretrained vs from scratch, one table
    llmpath gpt finetune --target hsk-pairs             # Shakespeare -> everyday English, before/after
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from llmpath.common import count_params, get_device, log, markdown_table, read_json, set_threads, setup_logging, write_json
from llmpath.config import Command, ConfigError, TrainConfig, build_config, opt, sub
from llmpath.data import EpochBatches, load_classification, split_indices
from llmpath.gpt.data import encode_special, lm_text, tokenizer_from_hf_files, tokenizer_from_state
from llmpath.gpt.finetune import GPTClassifier, classify_loss, collate, encode_texts, lm_val_loss, predict
from llmpath.generation import beam_search, generate, stream
from llmpath.gpt.hf import from_hf, local_folder, to_hf
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.gpt.pretrain import CHAR_TOKENIZER, PRESETS, GPTRun, pretrain  # noqa: F401  (PRESETS: the topic's)
from llmpath.runs import load_run, open_folder, reuse, run_path, start_run, sub_config
from llmpath.tour import StageResult
from llmpath.train import fit

TOPIC = "gpt"


# ----------------------------------------------------------------------------- loading

def load_any(src: str, device: torch.device | str = "cpu", dropout: float = 0.0):
    """(model, tokenizer): a run folder of ours, a GPT-2 folder (config.json + model.safetensors) or a hub name."""
    path = Path(src)
    if (path / "ckpt").is_dir():
        model, tok, _ = load_run(path, device, dropout=dropout, topic=TOPIC)
        return model, tok
    if path.exists() and not (path / "config.json").exists():
        raise ConfigError(f"'{src}' is neither a run folder (with ckpt/) nor a GPT-2 folder (with config.json)")
    path = local_folder(src)  # a hub name ("gpt2") is downloaded first, where the hub is reachable
    model = from_hf(path, dropout=dropout).to(device)
    if (path / CHAR_TOKENIZER).exists():  # exported by `llmpath gpt export` from a char-level run
        return model, tokenizer_from_state(read_json(path / CHAR_TOKENIZER))
    if not (path / "vocab.json").exists():
        raise ConfigError(f"'{src}' holds no tokenizer (vocab.json + merges.txt, or {CHAR_TOKENIZER})")
    return model, tokenizer_from_hf_files(path)


# ------------------------------------------------------------------------------- train

def train(cfg: GPTRun) -> dict:
    """Pretrain (or continue training) a GPT on a text corpus with the shared fit loop."""
    return pretrain(cfg, TOPIC, GPT, load_init=load_any, title="GPT")


# ------------------------------------------------------------------------------ sample

@dataclass
class SampleRun(GPTRun):
    """Sampling options; the training options are there so that presets name the run to load."""

    run: str = opt("", "run folder, GPT-2 folder or hub name to load (default: <out>/gpt/<name or preset>)")
    prompt: str = opt("ROMEO:", "text to continue")
    max_new_tokens: int = opt(300, "tokens to generate", min=0)
    temperature: float = opt(0.8, "softmax temperature (0 = greedy)", min=0)
    top_k: int = opt(0, "sample among the k most likely tokens (0 = all)", min=0)
    top_p: float = opt(1.0, "sample among the most likely tokens whose probability adds up to p (1 = all)", above=0, max=1)
    repetition_penalty: float = opt(1.0, "> 1 makes tokens already in the text less likely", above=0)
    greedy: bool = opt(False, "always take the most likely token")
    num_beams: int = opt(1, "beam search with this many beams (> 1: deterministic, ignores sampling options)", min=1)
    stop: str = opt("", "comma-separated stop strings, each one token (e.g. '\\n' or <|endoftext|>)")
    stream: bool = opt(False, "print tokens as they are generated")
    use_cache: bool = opt(True, "keep keys/values between steps (KV cache)")


def _sample_source(cfg: SampleRun) -> str:
    if cfg.run:
        return cfg.run
    src = run_path(cfg, TOPIC)
    if not (src / "ckpt").exists():
        raise ConfigError(f"no trained model in {src}; train one first: llmpath gpt train --preset={cfg.preset or 'small'}"
                          " (or point --run at a run folder or a GPT-2 folder)")
    return str(src)


def _stop_ids(tok, stop: str) -> list[int]:
    ids = []
    for s in [p for p in stop.split(",") if p]:
        s = s.encode().decode("unicode_escape")  # '\n' typed on a command line means a newline
        enc = encode_special(tok, s)
        if len(enc) != 1:
            raise ConfigError(f"stop string {s!r} is {len(enc)} tokens; each stop must be exactly one token")
        ids += enc
    return ids


def _gen_kwargs(cfg: SampleRun, tok) -> dict:
    if cfg.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"--top_p must be in (0, 1], got {cfg.top_p}")
    return dict(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p, greedy=cfg.greedy,
                repetition_penalty=cfg.repetition_penalty, stop_tokens=_stop_ids(tok, cfg.stop), use_cache=cfg.use_cache)


def sample(cfg: SampleRun) -> str:
    """Continue --prompt with a trained model (sampling, greedy or beam search); prints the text."""
    setup_logging()
    set_threads(cfg.threads)  # --threads, or the preset's (1)
    device = get_device(cfg.device)
    model, tok = load_any(_sample_source(cfg), device)
    torch.manual_seed(cfg.seed)
    prompt = tok.encode(cfg.prompt)
    if not prompt:
        raise ConfigError("--prompt is empty; give at least one character, e.g. --prompt 'ROMEO:'")
    kw = _gen_kwargs(cfg, tok)
    start = min(len(prompt), model.cfg.block_size)  # a longer prompt is cropped to the context
    if cfg.stream and cfg.num_beams == 1:
        print(cfg.prompt, end="", flush=True)
        out = []
        for t in stream(model, prompt, cfg.max_new_tokens, **kw):
            out.append(t)
            print(tok.decode([t]), end="", flush=True)
        print()
        return cfg.prompt + tok.decode(out)
    if cfg.num_beams > 1:
        ids = beam_search(model, prompt, cfg.num_beams, cfg.max_new_tokens, stop_tokens=kw["stop_tokens"],
                          use_cache=cfg.use_cache)
    else:
        ids = generate(model, prompt, cfg.max_new_tokens, **kw)
    text = cfg.prompt + tok.decode(ids[0, start:].tolist())
    print(text)
    return text


# -------------------------------------------------------------------------------- chat

def chat(cfg: SampleRun) -> int:
    """A minimal REPL: each line you type is appended to the text and the model continues it.

    /reset forgets the history, /quit (or end of input, Ctrl-D) leaves. A char-level Shakespeare model
    answers in the style of a play, not as an assistant: that needs instruction tuning (later stages).
    """
    setup_logging()
    set_threads(cfg.threads)  # --threads, or the preset's (1)
    device = get_device(cfg.device)
    model, tok = load_any(_sample_source(cfg), device)
    torch.manual_seed(cfg.seed)
    kw = _gen_kwargs(cfg, tok)
    print("llmpath gpt chat: type a line and press Enter; /reset clears the history, /quit or Ctrl-D leaves",
          file=sys.stderr)
    history: list[int] = []
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            history = []
            continue
        try:
            history += tok.encode(line + "\n")
        except ValueError as e:  # a character outside a char vocabulary: say so and go on
            print(f"error: {e}", file=sys.stderr)
            continue
        history = history[-(model.cfg.block_size - 1):]  # leave room for one new token; crop quietly
        reply: list[int] = []
        for t in stream(model, history, cfg.max_new_tokens, **kw):
            reply.append(t)
            piece = tok.decode([t])
            print(piece, end="", flush=True)
            if tok.decode(reply[-2:]).endswith("\n\n"):
                break  # a blank line ends a speech: hand the turn back
        if not tok.decode(reply).endswith("\n"):
            print()
        history += reply


# ------------------------------------------------------------------------------ export

@dataclass
class ExportRun(SampleRun):
    dir: str = opt("", "folder to write config.json + model.safetensors to (default: <run>/hf)")


def export(cfg: ExportRun) -> int:
    """Write a trained run as a Hugging Face GPT-2 folder (and its tokenizer)."""
    setup_logging()
    src = Path(_sample_source(cfg))
    model, tok, _ = load_run(src)
    out = to_hf(model, cfg.dir or src / "hf")
    if hasattr(tok, "save_hf"):
        tok.save_hf(out)  # vocab.json + merges.txt: transformers' GPT2Tokenizer reads them
    else:
        write_json(out / CHAR_TOKENIZER, tok.state_dict())  # a char vocabulary has no GPT-2 form
    log.info(f"wrote {out}: transformers.GPT2LMHeadModel.from_pretrained('{out}') loads it")
    return 0


# ---------------------------------------------------------------------------- classify

@dataclass
class ClassifyRun(GPTRun):
    task: str = opt("tweets", "classification data: tweets, chinese-reviews or a .csv/.jsonl path")
    pretrained: str = opt("", "pretrained run or GPT-2 folder (default: <out>/gpt/<preset>)")
    scratch: bool = opt(True, "also train the same model from random weights, for the comparison")
    max_len: int = opt(0, "tokens kept per text (0 = the model's block_size)", min=0)
    clf_steps: int = opt(400, "optimizer steps of each finetuning run", min=1)
    clf_lr: float = opt(1e-3, "peak learning rate for finetuning", above=0)
    clf_batch_size: int = opt(32, "texts per batch", min=1)


def _clf_train_cfg(cfg: ClassifyRun) -> TrainConfig:
    return replace(cfg.train, max_steps=cfg.clf_steps, lr=cfg.clf_lr, batch_size=cfg.clf_batch_size,
                   warmup_steps=min(cfg.train.warmup_steps, cfg.clf_steps // 10), resume=False,
                   eval_interval=max(cfg.clf_steps // 4, 1))


def classify(cfg: ClassifyRun) -> dict:
    """Finetune a classification head from the pretrained GPT and from scratch; accuracy table."""
    from sklearn.metrics import f1_score

    setup_logging()
    src = cfg.pretrained or str(Path(cfg.out) / TOPIC / (cfg.preset or "small"))
    pre, tok = load_any(src, "cpu")
    data = load_classification(cfg.task)
    tr, va, te = split_indices(len(data), seed=cfg.seed)
    seqs = encode_texts(tok, data.texts, cfg.max_len or pre.cfg.block_size)
    rows = {}
    for init in ["pretrained"] + (["scratch"] if cfg.scratch else []):
        c = replace(cfg, name=f"{cfg.name or cfg.preset}-{Path(cfg.task).stem}-{init}", model=replace(pre.cfg),
                    train=_clf_train_cfg(cfg))
        if (done := reuse(c, TOPIC)) is not None:
            rows[init] = done
            continue
        run = start_run(c, TOPIC)
        run.save_config()
        torch.manual_seed(cfg.seed)
        body = pre if init == "pretrained" else GPT(pre.cfg)
        model = GPTClassifier(body, len(data.label_names))
        batches = EpochBatches(len(tr), c.train.batch_size, lambda i: collate(seqs, data.labels, tr[i]), seed=cfg.seed)
        val_seqs, test_seqs = [seqs[i] for i in va], [seqs[i] for i in te]

        def evaluate(m):
            return {"val_acc": float((predict(m, val_seqs) == data.labels[va]).mean())}

        # run_dir, not run=: its checkpoints hold a classifier, which load_run (GPT language models) refuses
        res = fit(model, classify_loss, batches, c.train, run_dir=run.path, device=run.device, config=c,
                  evaluate=evaluate, best_metric="val_acc", best_mode="max", restore_best=True)
        pred = predict(model, test_seqs)
        rows[init] = run.finish({"test_acc": float((pred == data.labels[te]).mean()),
                                 "test_macro_f1": float(f1_score(data.labels[te], pred, average="macro")),
                                 "val_acc": res.best, "steps": res.step, "seconds": round(res.seconds, 1),
                                 "params": count_params(model)})
        log.info(f"{init}: test accuracy {rows[init]['test_acc']:.4f}, macro-F1 {rows[init]['test_macro_f1']:.4f}")
    result = {"task": cfg.task, "pretrained_from": src, "labels": data.label_names, "test_size": len(te),
              "majority_acc": float(np.bincount(data.labels[te]).max() / len(te)), "rows": rows}
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset}-{Path(cfg.task).stem}-classify"), TOPIC)
    write_json(out / "results.json", result)
    print(classify_table(result))
    return result


def classify_table(result: dict) -> str:
    rows = [[f"GPT {name}", f"{r['test_acc']:.4f}", f"{r['test_macro_f1']:.4f}", r["steps"], f"{r['seconds']:.0f}"]
            for name, r in result["rows"].items()]
    rows.append(["多数类基线", f"{result['majority_acc']:.4f}", "", "", ""])
    return markdown_table(["模型", "测试集准确率", "测试集宏 F1", "步数", "秒"], rows)


# ---------------------------------------------------------------------------- finetune

@dataclass
class FinetuneRun(GPTRun):
    target: str = opt("hsk-pairs", "second-domain text (a pairs set gives its English side)")
    pretrained: str = opt("", "pretrained run folder (default: <out>/gpt/<preset>)")
    ft_steps: int = opt(300, "optimizer steps of finetuning", min=1)
    ft_lr: float = opt(1e-3, "peak learning rate for finetuning", above=0)


def finetune(cfg: FinetuneRun) -> dict:
    """Continue pretraining on a second domain; val loss and samples before and after."""
    src = cfg.pretrained or str(Path(cfg.out) / TOPIC / (cfg.preset or "small"))
    c = replace(cfg, data=cfg.target, init_from=src, name=f"{cfg.name or cfg.preset}-{Path(cfg.target).stem}-ft",
                train=replace(cfg.train, max_steps=cfg.ft_steps, lr=cfg.ft_lr,
                              warmup_steps=min(cfg.train.warmup_steps, cfg.ft_steps // 10),
                              eval_interval=max(cfg.ft_steps // 3, 1)))
    summary = train(sub_config(c, GPTRun))
    if summary:
        print(f"val loss on {cfg.target}: before {summary['before']['val_loss']:.4f} -> after {summary['val_loss']:.4f}\n"
              f"--- before ---\n{summary['before']['sample']}\n--- after ---\n{summary['sample']}")
    return summary


# -------------------------------------------------------------------------- strategies

STRATEGIES: dict[str, dict] = {
    "greedy": dict(greedy=True),
    "greedy + repetition penalty 1.3": dict(greedy=True, repetition_penalty=1.3),
    "beam search (4 beams)": dict(num_beams=4),
    "temperature 0.5": dict(temperature=0.5),
    "temperature 1.0": dict(temperature=1.0),
    "temperature 1.5": dict(temperature=1.5),
    "top-k 10": dict(top_k=10),
    "top-p 0.9": dict(top_p=0.9),
}


def strategies(cfg: SampleRun, n_samples: int = 4, length: int = 200) -> str:
    """Each decoding strategy on one trained model: likelihood, repetition and real-word rate of its text.

    nats/char is the model's own loss on the generated text (scored in windows of its context); distinct
    4-grams is the share of character 4-grams that are unique (low = loops); real words is the share of
    generated words that occur in the training text.
    """
    import re

    setup_logging()
    set_threads(cfg.threads)  # --threads, or the preset's (1)
    model, tok = load_any(_sample_source(cfg), "cpu")
    words = set(re.findall(r"[A-Za-z']+", lm_text(cfg.data)[:2_000_000]))
    prompt = tok.encode(cfg.prompt)
    rows = []
    for name, kw in STRATEGIES.items():
        texts, nll = [], []
        runs = 1 if "greedy" in kw or "num_beams" in kw else n_samples
        for i in range(runs):
            g = torch.Generator().manual_seed(cfg.seed + i)
            if "num_beams" in kw:
                ids = beam_search(model, prompt, kw["num_beams"], length)
            else:
                ids = generate(model, prompt, length, generator=g, **kw)
            nll.append(lm_val_loss(model, ids[0].numpy(), model.cfg.block_size))  # windows of the context
            texts.append(tok.decode(ids[0, len(prompt):].tolist()))
        grams = [t[i:i + 4] for t in texts for i in range(len(t) - 3)]
        found = [w for t in texts for w in re.findall(r"[A-Za-z']+", t)]
        real = sum(w in words for w in found) / max(len(found), 1)
        example = texts[0][:60].replace("\n", " / ").replace("|", "/")
        rows.append([name, f"{np.mean(nll):.3f}", f"{len(set(grams)) / max(len(grams), 1):.2f}", f"{real:.0%}", f"`{example}`"])
    table = markdown_table(["解码策略", "模型自评（奈特/字符）", "不重复的 4-gram 比例", "真实单词比例", "示例"], rows,
                           "lrrrl")
    print(table)
    return table


# -------------------------------------------------------------------------------- tour

def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 5 of `llmpath tour`: pretrain the preset on Shakespeare, sample, time the KV cache."""
    cfg = build_config(GPTRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], PRESETS)
    summary = train(cfg)
    model, tok, _ = load_run(run_path(cfg, TOPIC))
    speed = cache_speed(model, tok, n=min(200, model.cfg.block_size - 2))
    val = summary["val_loss"]
    bar = {"tiny": 4.0, "small": 2.0}.get(preset, 2.0)  # tiny: clearly better than uniform (ln 73 = 4.29)
    table = (markdown_table(["预设", "参数量", "步数", "验证损失（奈特/字符）", "秒", "词元/秒"],
                            [[preset, f"{summary['params']:,}", summary["steps"], f"{val:.4f}", f"{summary['seconds']:.0f}",
                              f"{summary['tokens_per_s']:,}"]])
             + f"\n\nKV 缓存：带缓存 {speed['with_cache']:.0f} 词元/秒，不带 {speed['without_cache']:.0f} 词元/秒"
             f"（{speed['speedup']:.1f} 倍），贪心输出逐词元相同：{'是' if speed['identical'] else '否'}"
             f"\n\n示例（温度 0.8，top-k 50）：\n\n```text\n{summary['sample'][:400]}\n```")
    return StageResult("val loss (nats/char)", val, f"val loss < {bar}", val < bar, table, summary["figures"])


@torch.no_grad()
def cache_speed(model: GPT, tok, n: int = 200) -> dict:
    """Greedy generation of n tokens from a newline, with and without the KV cache: tokens/s and equality."""
    prompt = tok.encode("\n")
    out = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        ids = generate(model, prompt, n, greedy=True, use_cache=use_cache)
        out[use_cache] = (ids, n / (time.perf_counter() - t0))
    return {"with_cache": out[True][1], "without_cache": out[False][1], "speedup": out[True][1] / out[False][1],
            "identical": bool(torch.equal(out[True][0], out[False][0]))}


def smoke() -> str:
    """Doctor check: a tiny GPT's hand-written and SDPA attention agree, and cached greedy decoding matches."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=8, block_size=16)).eval()
    x = torch.randint(0, 11, (2, 7))
    fast = model(x)[0]
    for b in model.h:
        b.attn.sdpa = False
    if not torch.allclose(fast, model(x)[0], atol=1e-5):
        raise RuntimeError("hand-written and SDPA attention disagree")
    if not torch.equal(generate(model, x[:1], 8, greedy=True), generate(model, x[:1], 8, greedy=True, use_cache=False)):
        raise RuntimeError("KV-cache decoding differs from full recomputation")
    return "tiny GPT ok (hand-written == SDPA attention; KV cache == no cache)"


# ------------------------------------------------------------------------------ commands

COMMANDS = {
    "train": Command(train, GPTRun, "pretrain a GPT (or continue from --init-from); DDP under torchrun",
                     examples=("llmpath gpt train", "llmpath gpt train --preset=tiny",
                               "llmpath gpt train --train.compile --train.max_steps=2000",
                               "torchrun --nproc_per_node=2 -m llmpath gpt train --train.batch_size=32")),
    "sample": Command(sample, SampleRun, "continue a prompt: sampling, greedy or beam search, optionally streamed",
                      positional=("prompt",),
                      examples=('llmpath gpt sample --prompt "ROMEO:" --stream',
                                'llmpath gpt sample "JULIET:" --top-p 0.9 --temperature 1.0',
                                'llmpath gpt sample "KING:" --num-beams 4 --max-new-tokens 40',
                                'llmpath gpt sample "Hello" --run path/to/gpt2-folder')),
    "chat": Command(chat, SampleRun, "interactive REPL over a trained model (Ctrl-D leaves)",
                    examples=("llmpath gpt chat", "llmpath gpt chat --temperature 0.7 --max-new-tokens 200")),
    "strategies": Command(strategies, SampleRun,
                          "compare decoding strategies on a trained model: likelihood, repetition, real words",
                          examples=('llmpath gpt strategies --prompt "ROMEO:"',)),
    "export": Command(export, ExportRun, "write a run as a Hugging Face GPT-2 folder (safetensors)",
                      examples=("llmpath gpt export --dir runs/gpt/small/hf",)),
    "classify": Command(classify, ClassifyRun,
                        "classification head: pretrained GPT vs from scratch; accuracy table",
                        examples=("llmpath gpt classify --task tweets",)),
    "finetune": Command(finetune, FinetuneRun,
                        "continue training on a second domain; val loss and samples before/after",
                        examples=("llmpath gpt finetune --target hsk-pairs",)),
}
