"""MLM + NSP objectives of BERT pretraining (Devlin et al. 2019, https://arxiv.org/abs/1810.04805, section 3.1)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.bert.model import IGNORE
from llmpath.common import to_device


class PretrainBatch(NamedTuple):
    """One pretraining batch: [CLS] A [SEP] B [SEP] ids (pad_id after the end), segment ids (0 for A, 1 for B),
    MLM labels (the original token at chosen positions, -100 elsewhere), NSP labels (0 IsNext, 1 NotNext;
    -100 for MLM-only runs)."""

    ids: Tensor          # (B, T) long
    segments: Tensor     # (B, T) long
    mlm_labels: Tensor   # (B, T) long, -100 = not predicted
    nsp_labels: Tensor   # (B,) long


def pretrain_loss(model: nn.Module, batch: PretrainBatch) -> Tensor:
    """MLM cross-entropy over the masked positions + NSP cross-entropy over the labelled pairs.

    The same total as Hugging Face's BertForPreTraining for the same labels (`labels`, `next_sentence_label`);
    a batch with no NSP labels (an MLM-only run) adds nothing for NSP instead of NaN.
    """
    mlm_logits, nsp_logits = model(batch.ids, batch.segments, mlm_labels=batch.mlm_labels)  # (N, V), (B, 2)
    target = batch.mlm_labels[batch.mlm_labels != IGNORE]  # (N,), in the order of the logits' rows
    # summed, then divided by the count (at least 1): the mean, and 0 rather than NaN when nothing is labelled
    mlm = F.cross_entropy(mlm_logits.float(), target, reduction="sum") / max(target.numel(), 1)
    n_nsp = (batch.nsp_labels != IGNORE).sum().clamp(min=1)
    nsp = F.cross_entropy(nsp_logits.float(), batch.nsp_labels, ignore_index=IGNORE, reduction="sum") / n_nsp
    return mlm + nsp


@torch.no_grad()
def mlm_nsp_metrics(model: nn.Module, batches: list[PretrainBatch]) -> dict[str, float]:
    """Held-out MLM loss and accuracy over all masked tokens (token-weighted), NSP accuracy and its chance level.

    nsp_majority is the share of the most common NSP label: the accuracy of always guessing it, the bar NSP
    accuracy has to clear. Both NSP numbers are NaN when no pair has an NSP label. Runs in eval mode.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, correct, tokens = 0.0, 0, 0
    nsp_correct, nsp_counts = 0, torch.zeros(2, dtype=torch.long)
    try:
        for b in batches:
            b = to_device(b, device)
            mlm_logits, nsp_logits = model(b.ids, b.segments, mlm_labels=b.mlm_labels)
            target = b.mlm_labels[b.mlm_labels != IGNORE]
            nll += F.cross_entropy(mlm_logits.float(), target, reduction="sum").item()
            correct += int((mlm_logits.argmax(-1) == target).sum())
            tokens += target.numel()
            has = b.nsp_labels != IGNORE
            nsp_correct += int((nsp_logits.argmax(-1)[has] == b.nsp_labels[has]).sum())
            nsp_counts += torch.bincount(b.nsp_labels[has].cpu(), minlength=2)[:2]
    finally:
        model.train(was)
    pairs = int(nsp_counts.sum())
    nan = float("nan")
    return {"mlm_loss": nll / tokens if tokens else nan, "mlm_acc": correct / tokens if tokens else nan,
            "nsp_acc": nsp_correct / pairs if pairs else nan,
            "nsp_majority": int(nsp_counts.max()) / pairs if pairs else nan}
