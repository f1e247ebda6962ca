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
from llmpath.bert.pretrain import TOPIC, BERTRun
from llmpath.common import count_params, log, paired_bootstrap, setup_logging
from llmpath.config import TrainConfig, opt
from llmpath.data import EpochBatches, load_classification, split_indices
from llmpath.data.batching import pad_sequences
from llmpath.runs import load_run, reuse, start_run
from llmpath.train import fit

N_STATES = 600  # test texts whose [CLS] states are kept for the PCA figure
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


def encode_texts(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """[CLS] text [SEP] ids of every text, the text cut to max_len - 2 tokens."""
    return [[tok.cls_id, *tok.encode(t)[: max_len - 2], tok.sep_id] for t in texts]


def collate(seqs: list[list[int]], labels: np.ndarray, idx: np.ndarray, pad_id: int) -> tuple[Tensor, Tensor]:
    return pad_sequences([seqs[i] for i in idx], pad_id), torch.as_tensor(labels[idx])


def classify_loss(model: BERTClassifier, batch: tuple[Tensor, Tensor]) -> Tensor:
    ids, labels = batch
    return F.cross_entropy(model(ids), labels)


@torch.no_grad()
def predict(model: BERTClassifier, seqs: list[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """Predicted class of every sequence (eval mode, batched; the padding is masked out)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    preds = [model(pad_sequences(seqs[a:a + batch_size], pad_id).to(device)).argmax(-1).cpu().numpy()
             for a in range(0, len(seqs), batch_size)]
    model.train(was)
    return np.concatenate(preds)


@torch.no_grad()
def cls_states(bert: BERT, seqs: list[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """The final hidden state at [CLS] of every sequence: (N, C)."""
    was = bert.training
    bert.eval()
    device = next(bert.parameters()).device
    out = [bert(pad_sequences(seqs[a:a + batch_size], pad_id).to(device))[0][:, 0].cpu().numpy()
           for a in range(0, len(seqs), batch_size)]
    bert.train(was)
    return np.concatenate(out)


def _train_cfg(cfg: ClassifyRun) -> TrainConfig:
    return replace(cfg.train, max_steps=cfg.clf_steps, lr=cfg.clf_lr, batch_size=cfg.clf_batch_size, epochs=0,
                   warmup_steps=max(cfg.clf_steps // 10, 1), resume=False, eval_interval=max(cfg.clf_steps // 4, 1))


def pretrained_folder(cfg: ClassifyRun) -> Path:
    return Path(cfg.pretrained) if cfg.pretrained else Path(cfg.out) / TOPIC / (cfg.name or cfg.preset or "small")


def classify(cfg: ClassifyRun) -> dict:
    """Finetune a classifier from the pretrained BERT and from scratch on one dataset; test accuracy, macro-F1,
    the paired-bootstrap interval of the accuracy gain, and the [CLS] states before and after finetuning."""
    from sklearn.metrics import f1_score

    setup_logging()
    src = pretrained_folder(cfg)
    pre, tok, pre_cfg = load_run(src, "cpu", dropout=cfg.model.dropout, topic=TOPIC,
                                 hint=f"llmpath bert train --preset={cfg.preset or 'small'}")
    data = load_classification(cfg.task)
    tr, va, te = split_indices(len(data), seed=SPLIT_SEED)
    seqs = encode_texts(tok, data.texts, pre_cfg.model.max_len)
    pad = tok.pad_id
    val_seqs, test_seqs = [seqs[i] for i in va], [seqs[i] for i in te]
    base = f"{cfg.name or cfg.preset or 'small'}-{Path(cfg.task).stem}"
    rows, preds = {}, {}
    for init in ["pretrained"] + (["scratch"] if cfg.scratch else []):
        c = replace(cfg, name=f"{base}-{init}", pretrained=str(src), model=replace(pre_cfg.model, dropout=cfg.model.dropout),
                    train=_train_cfg(cfg))
        torch.manual_seed(cfg.seed)
        body = pre.bert if init == "pretrained" else BERT(c.model)
        model = BERTClassifier(body, len(data.label_names), dropout=cfg.clf_dropout)
        if (done := reuse(c, TOPIC)) is not None and (Path(done["path"]) / "predictions.npy").exists():
            rows[init], preds[init] = done, np.load(Path(done["path"]) / "predictions.npy")
            continue
        run = start_run(c, TOPIC)
        run.save_config()
        if init == "pretrained":  # [CLS] states of test texts before finetuning (the figure's left panel)
            before = cls_states(model.bert, test_seqs[:N_STATES], pad)
        batches = EpochBatches(len(tr), c.train.batch_size, lambda i: collate(seqs, data.labels, tr[i], pad), seed=cfg.seed)

        def evaluate(m):
            return {"val_acc": float((predict(m, val_seqs, pad) == data.labels[va]).mean())}

        # run_dir, not run=: these checkpoints hold a classifier, which load_run (pretraining models) refuses
        res = fit(model, classify_loss, batches, c.train, run_dir=run.path, device=run.device, config=c,
                  evaluate=evaluate, best_metric="val_acc", best_mode="max", restore_best=True)
        preds[init] = pred = predict(model, test_seqs, pad)
        np.save(run.path / "predictions.npy", pred)
        if init == "pretrained":
            np.savez(run.path / "cls_states.npz", before=before, after=cls_states(model.bert, test_seqs[:N_STATES], pad),
                     labels=data.labels[te][:N_STATES], label_names=np.array(data.label_names))
        rows[init] = run.finish({"test_acc": float((pred == data.labels[te]).mean()),
                                 "test_macro_f1": float(f1_score(data.labels[te], pred, average="macro")),
                                 "val_acc": res.best, "steps": res.step, "seconds": round(res.seconds, 1),
                                 "params": count_params(model), "path": str(run.path)})
        log.info(f"{Path(cfg.task).stem} {init}: test accuracy {rows[init]['test_acc']:.4f}, "
                 f"macro-F1 {rows[init]['test_macro_f1']:.4f}")
    result = {"task": cfg.task, "pretrained_from": str(src), "labels": data.label_names, "test_size": len(te),
              "majority_acc": float(np.bincount(data.labels[te]).max() / len(te)), "rows": rows}
    if "scratch" in preds:
        y = data.labels[te]
        result["gain"] = paired_bootstrap(preds["pretrained"] == y, preds["scratch"] == y, seed=cfg.seed)
    return result


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
