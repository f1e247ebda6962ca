"""`llmpath bert ...`: pretrain, fill in [MASK], finetune a classifier, compare, export, tour.

    llmpath bert train                               # preset small: MLM + NSP pretraining (~1 min on a CPU)
    llmpath bert fill "今天的菜很[MASK]吃"             # top-k fills with probabilities
    llmpath bert classify --task tweets              # pretrained vs from scratch, one dataset
    llmpath bert compare                             # both datasets, TF-IDF logistic regression, bootstrap intervals
    llmpath bert ablation                            # MLM only vs MLM + NSP, measured on the finetuning results
    llmpath bert export --dir runs/bert/small/hf     # BertForPreTraining.from_pretrained(...) reads it
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from llmpath.bert.figures import attention_heads_figure, cls_pca_figure
from llmpath.bert.finetune import ClassifyRun, classify, classify_tasks
from llmpath.bert.hf import to_hf
from llmpath.bert.model import BERTConfig, BERTPretraining
from llmpath.bert.pretrain import TOPIC, BERTRun, fill_masks, load_pretrained, pretrain
from llmpath.common import get_device, log, markdown_table, set_threads, setup_logging, write_json
from llmpath.config import Command, build_config, opt
from llmpath.plotting import save_fig
from llmpath.runs import open_folder, run_path, variant
from llmpath.tour import StageResult

TASKS = ("tweets", "chinese-reviews")
TASK_NAMES = {"tweets": "tweets（英文 3 类）", "chinese-reviews": "chinese-reviews（中文 2 类）"}


def _model(n_layer: int, n_head: int, n_embd: int, max_len: int) -> dict:
    return {"model.n_layer": n_layer, "model.n_head": n_head, "model.n_embd": n_embd, "model.n_ff": 4 * n_embd,
            "model.max_len": max_len}


PRESETS: dict[str, dict] = {
    "tiny": {**_model(1, 2, 32, 32), "threads": 1, "sources": "wiki", "vocab_size": 600, "eval_examples": 64,
             "train.max_steps": 20, "train.batch_size": 8, "train.lr": 1e-3, "train.warmup_steps": 2,
             "train.eval_interval": 0, "train.progress": False},
    # the domain texts only (the classification training texts), no dropout: less than one epoch, nothing to overfit
    "small": {**_model(2, 2, 128, 64), "threads": 1, "sources": "tweets-train,chinese-reviews-train", "model.dropout": 0.0,
              "train.max_steps": 1000, "train.batch_size": 32, "train.lr": 2e-3, "train.warmup_steps": 30,
              "train.weight_decay": 0.01, "train.eval_interval": 100},
    "base": {**_model(4, 4, 256, 64), "threads": 1, "sources": "wiki,tweets-train,chinese-reviews-train",
             "train.max_steps": 1200, "train.batch_size": 32, "train.lr": 1e-3, "train.warmup_steps": 100,
             "train.weight_decay": 0.01, "train.eval_interval": 300},
}
# finetuning options per preset (classify, compare, ablation): the pretraining config has no such fields
FINETUNE: dict[str, dict] = {
    "tiny": {"clf_steps": 8, "clf_batch_size": 8},
    "small": {"clf_steps": 200, "clf_lr": 5e-4, "clf_batch_size": 32},
    "base": {"clf_steps": 300, "clf_lr": 5e-4, "clf_batch_size": 32},
}
CLF_PRESETS: dict[str, dict] = {k: {**v, **FINETUNE[k]} for k, v in PRESETS.items()}


# ------------------------------------------------------------------------------ train

def train(cfg: BERTRun) -> dict:
    """Pretrain (or reuse a finished run): WordPiece vocabulary, MLM + NSP (or MLM only); see bert/pretrain.py."""
    return pretrain(cfg)


# ------------------------------------------------------------------------------- fill

@dataclass
class FillRun(BERTRun):
    text: str = opt("今天的菜很[MASK]吃", "text with one or more [MASK] to fill in")
    run: str = opt("", "pretrained run folder (default: <out>/bert/<name or preset>)")
    top_k: int = opt(5, "candidates shown per [MASK]", min=1)


def fill(cfg: FillRun) -> list:
    """Print the top-k tokens (with probabilities) for every [MASK] in --text."""
    setup_logging()
    set_threads(cfg.threads)
    src = Path(cfg.run) if cfg.run else run_path(cfg, TOPIC)
    model, tok, _ = load_pretrained(src, cfg, get_device(cfg.device))
    out = fill_masks(model, tok, cfg.text, cfg.top_k)
    for i, cands in enumerate(out, 1):
        print(f"[MASK] {i}: " + "  ".join(f"{t} {p:.3f}" for t, p in cands))
    return out


# ----------------------------------------------------------------------------- compare

def classify_one(cfg: ClassifyRun) -> dict:
    """One dataset: pretrained vs from scratch, printed as a table with the bootstrap interval of the gain."""
    result = classify(cfg)
    print(compare_table({cfg.task: result}))
    return result


def _task_name(task: str) -> str:
    return TASK_NAMES.get(task, Path(task).stem)


def compare(cfg: ClassifyRun, tasks: tuple[str, ...] = TASKS) -> dict:
    """Pretrained vs from-scratch BERT vs TF-IDF logistic regression on both datasets: one table."""
    setup_logging()
    results = classify_tasks(cfg, list(tasks), tfidf=True)
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-compare"), TOPIC)
    write_json(out / "results.json", results)
    print(compare_table(results))
    return results


def compare_table(results: dict) -> str:
    """Rows = models, columns = accuracy and macro-F1 per dataset; then the pretrained-minus-scratch gain."""
    tasks = list(results)
    head = ["模型"] + [f"{_task_name(t)} {m}" for t in tasks for m in ("准确率", "宏 F1")]
    names = {"pretrained": "BERT，预训练后微调", "scratch": "同一 BERT，从随机权重训练", "mlm-only": "BERT，只用 MLM 预训练后微调"}
    rows = []
    for key, label in names.items():
        if all(key in results[t]["rows"] for t in tasks):
            rows.append([label] + [f"{results[t]['rows'][key][m]:.4f}" for t in tasks for m in ("test_acc", "test_macro_f1")])
    if all("tfidf_lr" in results[t] for t in tasks):
        rows.append(["TF-IDF + 逻辑回归（第 1 章）"] + [f"{results[t]['tfidf_lr'][m]:.4f}" for t in tasks
                                                   for m in ("test_acc", "test_macro_f1")])
    rows.append(["多数类"] + [x for t in tasks for x in (f"{results[t]['majority_acc']:.4f}", "")])
    table = markdown_table(head, rows, "l" + "r" * (len(head) - 1))
    gains = [f"{_task_name(t)}：{g['diff'] * 100:+.2f} 个百分点（95% 区间 {g['lo'] * 100:+.2f} ~ {g['hi'] * 100:+.2f}）"
             for t in tasks if (g := results[t].get("gain"))]
    if gains:
        table += "\n\n预训练减从零的测试准确率（配对自助法，2000 次重采样）：" + "；".join(gains)
    return table


@dataclass
class AblationRun(ClassifyRun):
    pass


def ablation(cfg: AblationRun) -> dict:
    """MLM only vs MLM + NSP pretraining, each finetuned on both datasets (RoBERTa's question, on our data)."""
    setup_logging()
    both = compare(cfg)
    mlm_cfg = variant(cfg, "mlm-only", nsp=False)
    pretrain(mlm_cfg)
    only = classify_tasks(replace(mlm_cfg, scratch=False), list(TASKS))
    for t in TASKS:
        both[t]["rows"]["mlm-only"] = only[t]["rows"]["pretrained"]
    out = open_folder(replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-ablation"), TOPIC)
    write_json(out / "results.json", both)
    print(compare_table(both))
    return both


# ----------------------------------------------------------------------------- figures

@dataclass
class FiguresRun(BERTRun):
    run: str = opt("", "pretrained run folder (default: <out>/bert/<name or preset>)")
    text: str = opt("今天的菜很好吃，服务也不错。", "sentence whose attention heads are drawn")


def figures(cfg: FiguresRun) -> list[Path]:
    """Attention heads of every layer over --text; [CLS] states before/after finetuning of each finished classify run."""
    setup_logging()
    src = Path(cfg.run) if cfg.run else run_path(cfg, TOPIC)
    model, tok, _ = load_pretrained(src, cfg)
    out = [save_fig(attention_heads_figure(model, tok, cfg.text), src / "figures" / "attention.png")]
    for t in TASKS:
        states = src.parent / f"{src.name}-{t}-pretrained" / "cls_states.npz"
        if states.exists():
            d = np.load(states)
            out.append(save_fig(cls_pca_figure(d["before"], d["after"], d["labels"], list(d["label_names"]),
                                               _task_name(t)), src / "figures" / f"cls_pca_{t}.png"))
    for p in out:
        log.info(f"wrote {p}")
    return out


# ------------------------------------------------------------------------------ export

@dataclass
class ExportRun(BERTRun):
    run: str = opt("", "pretrained run folder (default: <out>/bert/<name or preset>)")
    dir: str = opt("", "folder for config.json + model.safetensors + vocab.txt (default: <run>/hf)")


def export(cfg: ExportRun) -> int:
    """Write a pretrained run as a Hugging Face BERT folder (BertForPreTraining + BertTokenizer read it)."""
    setup_logging()
    src = Path(cfg.run) if cfg.run else run_path(cfg, TOPIC)
    model, tok, _ = load_pretrained(src, cfg)
    out = Path(cfg.dir) if cfg.dir else src / "hf"
    to_hf(model, out)
    tok.save(out)
    log.info(f"wrote {out}: transformers.BertForPreTraining.from_pretrained('{out}') and BertTokenizer read it")
    return 0


# -------------------------------------------------------------------------------- tour

def pretrain_table(summaries: dict[str, dict]) -> str:
    """One row per pretraining run: held-out MLM loss against the unigram model, masked-token and NSP accuracy."""
    rows = [[name, f"{s['params']:,}", s["steps"], f"{s['mlm_loss']:.3f}", f"{s['unigram_loss']:.3f}",
             f"{s['unigram_loss'] - s['mlm_loss']:.3f}", f"{s['mlm_acc']:.3f}",
             f"{s['nsp_acc']:.3f}（{s['nsp_majority']:.3f}）" if s.get("nsp_acc") is not None else "—"]
            for name, s in summaries.items()]
    return markdown_table(["运行", "参数量", "步数", "留出 MLM 损失（奈特）", "一元模型", "低于一元模型", "被遮词元准确率",
                           "NSP 准确率（多数类）"], rows)


def tour(preset: str = "small", out: str = "runs", fresh: bool = False) -> StageResult:
    """Stage 6 of `llmpath tour`: pretrain, finetune on both datasets (pretrained vs scratch), the bars."""
    cfg = build_config(ClassifyRun, [f"--preset={preset}", f"--out={out}", f"--fresh={fresh}"], CLF_PRESETS)
    cfg.workers = min(2, os.cpu_count() or 1)  # two finetuning runs side by side, one process (one core) each
    summary = pretrain(cfg)
    res = compare(cfg)
    gap = summary["unigram_loss"] - summary["mlm_loss"]
    better = all(res[t]["rows"]["pretrained"]["test_acc"] >= res[t]["rows"]["scratch"]["test_acc"] for t in TASKS)
    passed = gap >= 1.0 and better
    pre = pretrain_table({preset: summary})
    shown = figures(build_config(FiguresRun, [f"--preset={preset}", f"--out={out}"], PRESETS))
    return StageResult("held-out MLM loss (nats)", summary["mlm_loss"],
                       "MLM loss >= 1 nat below the unigram model; pretrained >= scratch accuracy on both datasets",
                       passed, pre + "\n\n" + compare_table(res),
                       [*summary["figures"], *map(str, shown)])


def smoke() -> str:
    """Doctor check: a tiny BERT's hand-written and SDPA attention agree, and padding leaves real tokens alone."""
    torch.manual_seed(0)
    model = BERTPretraining(BERTConfig(vocab_size=13, n_layer=1, n_head=2, n_embd=8, n_ff=16, max_len=16)).eval()
    x = torch.randint(5, 13, (2, 7))
    fast = model(x)[0]
    slow = BERTPretraining(replace(model.cfg, sdpa=False)).eval()
    slow.load_state_dict(model.state_dict())
    if not torch.allclose(fast, slow(x)[0], atol=1e-5):
        raise RuntimeError("hand-written and SDPA attention disagree")
    padded = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], 1)
    if not torch.allclose(model(padded)[0][:, :7], fast, atol=1e-5):
        raise RuntimeError("padding changed the outputs of real tokens")
    return "tiny BERT ok (hand-written == SDPA attention; padding masked out)"


COMMANDS = {
    "train": Command(train, BERTRun, "pretrain a BERT: WordPiece vocabulary, MLM + NSP (or MLM only)",
                     examples=("llmpath bert train", "llmpath bert train --preset=tiny",
                               "llmpath bert train --nsp=false --name=small-mlm-only")),
    "fill": Command(fill, FillRun, "top-k fills of every [MASK] in a text, with probabilities", positional=("text",),
                    examples=('llmpath bert fill "今天的菜很[MASK]吃"', 'llmpath bert fill "the movie was [MASK] good"')),
    "classify": Command(classify_one, ClassifyRun, "finetune on one dataset: pretrained vs from scratch",
                        examples=("llmpath bert classify --task tweets",), presets=CLF_PRESETS),
    "compare": Command(compare, ClassifyRun, "both datasets: pretrained, scratch, TF-IDF logistic regression; bootstrap",
                       examples=("llmpath bert compare", "llmpath bert compare --preset=base"), presets=CLF_PRESETS),
    "ablation": Command(ablation, AblationRun, "MLM only vs MLM + NSP, measured on the finetuning results",
                        examples=("llmpath bert ablation --preset=base",), presets=CLF_PRESETS),
    "figures": Command(figures, FiguresRun, "attention heads of every layer; [CLS] states before/after finetuning",
                       examples=('llmpath bert figures', 'llmpath bert figures --text "the movie was great"')),
    "export": Command(export, ExportRun, "write a pretrained run as a Hugging Face BERT folder",
                      examples=("llmpath bert export --dir runs/bert/small/hf",)),
}
