"""Finetuning BERT for text classification: pretrained vs the same model from random weights.

    llmpath bert classify --task tweets              # one dataset: pretrained vs scratch, accuracy + macro-F1
    llmpath bert compare                             # both datasets + TF-IDF logistic regression, bootstrap intervals

Each text becomes [CLS] text [SEP] (cut to the model's length); the classifier reads the pooled [CLS]
state (BertForSequenceClassification's head). Both initialisations share the tokenizer, the
architecture, the steps and the learning rate; the checkpoint with the best validation accuracy is
tested. The split is the one of stages 1 and 5 (80/10/10, seed 0), and only the training texts ever
reached pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmpath.bert.model import BERT, BERTClassifier
from llmpath.bert.pretrain import TOPIC, BERTRun, load_pretrained
from llmpath.common import count_params, log, map_processes, paired_bootstrap, set_threads, setup_logging
from llmpath.config import TrainConfig, opt
from llmpath.data import EpochBatches, load_classification, split_indices
from llmpath.data.batching import pad_sequences
from llmpath.runs import reuse, start_run
from llmpath.train import fit

N_STATES = 600  # test texts (a seeded sample) whose [CLS] states are kept for the PCA figure
SPLIT_SEED = 0  # the split of stages 1 and 5, whatever --seed says: test texts never reach pretraining


@dataclass
class ClassifyRun(BERTRun):
    task: str = opt("tweets", "classification data: tweets, chinese-reviews or a .csv/.jsonl path")
    pretrained: str = opt("", "pretrained run folder (default: <out>/bert/<name or preset>)")
    scratch: bool = opt(True, "also train the same model from random weights, for the comparison")
    clf_steps: int = opt(300, "optimizer steps of each finetuning run", min=1)
    clf_lr: float = opt(5e-4, "peak learning rate of finetuning", above=0)
    clf_batch_size: int = opt(32, "texts per batch", min=1)
    clf_dropout: float = opt(0.1, "dropout before the classification layer", min=0, below=1)
    workers: int = opt(1, "finetuning runs trained side by side, one process each (use with --threads=1)", min=1,
                       result=False)


def encode_texts(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """[CLS] text [SEP] ids of every text, the text cut to max_len - 2 tokens."""
    return [[tok.cls_id, *tok.encode(t)[: max_len - 2], tok.sep_id] for t in texts]


def collate(seqs: list[list[int]], labels: np.ndarray, idx: np.ndarray, pad_id: int) -> tuple[Tensor, Tensor]:
    return pad_sequences([seqs[i] for i in idx], pad_id), torch.as_tensor(labels[idx])


def classify_loss(model: BERTClassifier, batch: tuple[Tensor, Tensor]) -> Tensor:
    ids, labels = batch
    return F.cross_entropy(model(ids), labels)


def _by_length(seqs: list[list[int]], batch_size: int) -> list[np.ndarray]:
    """Index batches of sequences sorted by length: little padding when every text is scored once."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    return [order[a:a + batch_size] for a in range(0, len(seqs), batch_size)]


@torch.no_grad()
def predict(model: BERTClassifier, seqs: list[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """Predicted class of every sequence (eval mode, batched by length; the padding is masked out)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = np.zeros(len(seqs), dtype=np.int64)
    for idx in _by_length(seqs, batch_size):
        out[idx] = model(pad_sequences([seqs[i] for i in idx], pad_id).to(device)).argmax(-1).cpu().numpy()
    model.train(was)
    return out


@torch.no_grad()
def cls_states(bert: BERT, seqs: list[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """The final hidden state at [CLS] of every sequence: (N, C)."""
    was = bert.training
    bert.eval()
    device = next(bert.parameters()).device
    out = np.zeros((len(seqs), bert.cfg.n_embd), dtype=np.float32)
    for idx in _by_length(seqs, batch_size):
        out[idx] = bert(pad_sequences([seqs[i] for i in idx], pad_id).to(device))[0][:, 0].cpu().numpy()
    bert.train(was)
    return out


def _train_cfg(cfg: ClassifyRun) -> TrainConfig:
    return replace(cfg.train, max_steps=cfg.clf_steps, lr=cfg.clf_lr, batch_size=cfg.clf_batch_size, epochs=0,
                   warmup_steps=max(cfg.clf_steps // 10, 1), resume=False, eval_interval=max(cfg.clf_steps // 4, 1))


def pretrained_folder(cfg: ClassifyRun) -> Path:
    return Path(cfg.pretrained) if cfg.pretrained else Path(cfg.out) / TOPIC / (cfg.name or cfg.preset or "small")


def _prepare(cfg: ClassifyRun):
    """(pretrained model, tokenizer, its config, data, split, encoded texts) of one dataset."""
    pre, tok, pre_cfg = load_pretrained(pretrained_folder(cfg), cfg, dropout=cfg.model.dropout)
    data = load_classification(cfg.task)
    return pre, tok, pre_cfg, data, split_indices(len(data), seed=SPLIT_SEED), encode_texts(tok, data.texts, pre_cfg.model.max_len)


def finetune(cfg: ClassifyRun, init: str) -> tuple[dict, np.ndarray]:
    """Finetune one classifier on cfg.task from the pretrained BERT (init="pretrained") or from random weights
    ("scratch"): (results with test accuracy and macro-F1, test predictions). A finished run is reused."""
    from sklearn.metrics import f1_score

    setup_logging()
    set_threads(cfg.threads)
    pre, tok, pre_cfg, data, (tr, va, te), seqs = _prepare(cfg)
    pad = tok.pad_id
    val_seqs, test_seqs = [seqs[i] for i in va], [seqs[i] for i in te]
    c = replace(cfg, name=f"{cfg.name or cfg.preset or 'small'}-{Path(cfg.task).stem}-{init}",
                pretrained=str(pretrained_folder(cfg)), model=replace(pre_cfg.model, dropout=cfg.model.dropout),
                train=_train_cfg(cfg))
    if (done := reuse(c, TOPIC)) is not None and (Path(done["path"]) / "predictions.npy").exists():
        return done, np.load(Path(done["path"]) / "predictions.npy")
    torch.manual_seed(cfg.seed)
    body = pre.bert if init == "pretrained" else BERT(c.model)
    model = BERTClassifier(body, len(data.label_names), dropout=cfg.clf_dropout)
    run = start_run(c, TOPIC)
    run.save_config()
    shown = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(te))[:N_STATES])  # test texts in the figure
    if init == "pretrained":  # [CLS] states of test texts before finetuning (the figure's left panel)
        before = cls_states(model.bert, [test_seqs[i] for i in shown], pad)
    batches = EpochBatches(len(tr), c.train.batch_size, lambda i: collate(seqs, data.labels, tr[i], pad), seed=cfg.seed)

    def evaluate(m):
        return {"val_acc": float((predict(m, val_seqs, pad) == data.labels[va]).mean())}

    # run_dir, not run=: these checkpoints hold a classifier, which load_run (pretraining models) refuses
    res = fit(model, classify_loss, batches, c.train, run_dir=run.path, device=run.device, config=c,
              evaluate=evaluate, best_metric="val_acc", best_mode="max", restore_best=True)
    pred = predict(model, test_seqs, pad)
    np.save(run.path / "predictions.npy", pred)
    if init == "pretrained":
        np.savez(run.path / "cls_states.npz", before=before, after=cls_states(model.bert, [test_seqs[i] for i in shown], pad),
                 labels=data.labels[te][shown], label_names=np.array(data.label_names))
    row = run.finish({"test_acc": float((pred == data.labels[te]).mean()),
                      "test_macro_f1": float(f1_score(data.labels[te], pred, average="macro")),
                      "val_acc": res.best, "steps": res.step, "seconds": round(res.seconds, 1),
                      "params": count_params(model), "path": str(run.path)})
    log.info(f"{Path(cfg.task).stem} {init}: test accuracy {row['test_acc']:.4f}, macro-F1 {row['test_macro_f1']:.4f}")
    return row, pred


def _job(job: tuple[ClassifyRun, str]):
    cfg, kind = job
    return tfidf_baseline(cfg.task) if kind == "tfidf" else finetune(cfg, kind)


def classify_tasks(cfg: ClassifyRun, tasks: list[str], tfidf: bool = False) -> dict[str, dict]:
    """For each dataset: pretrained vs from-scratch finetuning (and TF-IDF logistic regression), test accuracy,
    macro-F1, the paired-bootstrap interval of the accuracy gain. With --workers=2 two runs train side by side."""
    setup_logging()
    load_pretrained(pretrained_folder(cfg), cfg)  # a missing run: one line before any worker starts
    kinds = ["pretrained"] + (["scratch"] if cfg.scratch else []) + (["tfidf"] if tfidf else [])
    jobs = [(replace(cfg, task=t), k) for t in tasks for k in kinds]
    done = dict(zip([(c.task, k) for c, k in jobs], map_processes(_job, jobs, cfg.workers)))
    results = {}
    for t in tasks:
        data = load_classification(t)
        y = data.labels[split_indices(len(data), seed=SPLIT_SEED)[2]]
        res = {"task": t, "pretrained_from": str(pretrained_folder(cfg)), "labels": data.label_names,
               "test_size": len(y), "majority_acc": float(np.bincount(y).max() / len(y)),
               "rows": {k: done[t, k][0] for k in kinds if k != "tfidf"}}
        if tfidf:
            res["tfidf_lr"] = done[t, "tfidf"]
        if cfg.scratch:
            res["gain"] = paired_bootstrap(done[t, "pretrained"][1] == y, done[t, "scratch"][1] == y, seed=cfg.seed)
        results[t] = res
    return results


def classify(cfg: ClassifyRun) -> dict:
    """One dataset (cfg.task): pretrained vs from scratch."""
    return classify_tasks(cfg, [cfg.task])[cfg.task]


def tfidf_baseline(task: str) -> dict:
    """Stage 1's TF-IDF (word/char n-grams) + logistic regression on the same split, C chosen on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from llmpath.mlp.features import build_features

    f = build_features(task, seed=SPLIT_SEED)
    best = max(((LogisticRegression(C=c, max_iter=300).fit(f.x_train, f.y_train), c) for c in (1, 2, 4)),
               key=lambda mc: (mc[0].predict(f.x_val) == f.y_val).mean())
    pred = best[0].predict(f.x_test)
    return {"test_acc": float((pred == f.y_test).mean()), "test_macro_f1": float(f1_score(f.y_test, pred, average="macro")),
            "C": best[1]}
