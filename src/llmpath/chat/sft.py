"""Supervised fine-tuning (SFT): next-token prediction on chat-formatted examples, with the loss on the answers only.

    batches = SFTBatches(tok, train_examples, batch_size=16, block_size=256)   # pack=True fills each row
    fit(model, sft_loss, batches, cfg, evaluate=lambda m: {"val_loss": response_loss(m, val_examples, tok)})
    response_loss(model, test_examples, tok)   # mean nats per assistant token: the main quality number

Pretraining and SFT are the same objective, cross-entropy of the next token; what changes is the data (conversations
in the chat template) and which positions count. A target is the next token where the template's mask says the model
must produce it (the answer and its <|im_end|>), and -100 elsewhere, which cross-entropy skips (ignore_index).
So prompts are context, never targets: the model spends its capacity on answering, not on imitating users.
`mask_everything=True` trains on every token instead (the "SFT without loss masking" ablation).

Two ways to make rectangular batches:
- padding (default): one conversation per row, padded on the right to the longest in the batch; pad targets are
  -100 and, attention being causal, a pad token comes after every real one, so padding changes nothing.
- packing (pack=True): whole conversations are laid one after another in rows of block_size + 1 tokens (next fit: a
  new row when one does not fit, then padded), so few positions are wasted. Attention is still plain causal: a
  conversation sees the ones before it in its row, and its positions do not restart. That costs a little: the model
  learns in a context it never meets when chatting (after an unrelated conversation, at later positions), and
  attention spends work on tokens it should ignore. A block-diagonal mask with restarted positions would avoid both;
  our models take no mask, so that is left out, and `response_loss` always scores unpacked conversations.
A conversation longer than block_size + 1 tokens keeps its beginning; one whose answers are all cut off is dropped.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmpath.chat.template import PAD, encode_chat
from llmpath.common import log
from llmpath.data.batching import EpochBatches, pad_sequences, sequential_batches
from llmpath.data.corpora import DataError

IGNORE = -100  # cross_entropy's ignore_index: a position that is no target


def _messages(example) -> list[dict]:
    """An llmpath.chat.data.Example or a plain list of messages -> the messages."""
    return getattr(example, "messages", example)


def encode_examples(tok, examples, block_size: int, mask_everything: bool = False) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) per example, cut to block_size + 1 tokens; examples left with nothing to learn are dropped."""
    examples, out = list(examples), []
    for ex in examples:
        ids, mask = encode_chat(tok, _messages(ex))
        ids, mask = ids[:block_size + 1], mask[:block_size + 1]
        if any(mask[1:]):  # the first token is never a target; the ablation drops the same conversations
            out.append((ids, [1] * len(ids) if mask_everything else mask))
    if len(out) < len(examples):
        log.info(f"dropped {len(examples) - len(out)} of {len(examples)} conversations whose answers lie "
                 f"beyond block_size={block_size}")
    return out


def shift(ids: list[int], mask: list[int]) -> tuple[list[int], list[int]]:
    """Inputs and targets: x = ids[:-1], y[t] = ids[t+1] where mask[t+1] else -100.

    shift([5, 6, 7, 8], [0, 0, 1, 1]) -> ([5, 6, 7], [-100, 7, 8])
    """
    return ids[:-1], [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) rows -> x, y (B, T) right-padded: x with pad_id, y with -100."""
    xs, ys = zip(*(shift(ids, mask) for ids, mask in rows))
    return pad_sequences(xs, pad_id), pad_sequences(ys, IGNORE)


def pack_rows(encoded: list[tuple[list[int], list[int]]], block_size: int) -> list[tuple[list[int], list[int]]]:
    """Lay whole conversations one after another in rows of at most block_size + 1 tokens (next fit, in order).

    The last token of one conversation then has the next one's <|im_start|> as its target, which the mask leaves out.
    """
    rows: list[tuple[list[int], list[int]]] = []
    ids: list[int] = []
    mask: list[int] = []
    for e_ids, e_mask in encoded:
        if ids and len(ids) + len(e_ids) > block_size + 1:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + e_ids, mask + e_mask
    if ids:
        rows.append((ids, mask))
    return rows


class SFTBatches:
    """Shuffled (x, y) batches of chat examples, epoch by epoch; batch i is a pure function of (seed, i).

    SFTBatches(tok, examples, batch_size=4, block_size=64)(0) -> x, y (4, T) int64, T <= 64
    """

    def __init__(self, tok, examples, batch_size: int, block_size: int, pack: bool = False,
                 mask_everything: bool = False, seed: int = 0):
        encoded = encode_examples(tok, examples, block_size, mask_everything)
        if pack:
            order = np.random.default_rng(seed).permutation(len(encoded))  # mix tasks within a row
            encoded = pack_rows([encoded[k] for k in order], block_size)
        self.rows, self.pad_id = encoded, tok.special_tokens[PAD]
        self._epochs = EpochBatches(len(self.rows), batch_size, self.collate, seed)
        self.per_epoch = self._epochs.per_epoch  # lets --train.epochs set max_steps

    def collate(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        return collate([self.rows[k] for k in indices], self.pad_id)

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._epochs(i)


def _token_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy over target positions, number of target positions)."""
    logits, _ = model(x)
    total = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
    return total, (y != IGNORE).sum()


def sft_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The objective for the shared fit: mean cross-entropy over the batch's target tokens (0 if it has none)."""
    x, y = batch
    total, n = _token_losses(model, x, y)
    return total / n.clamp(min=1)  # a plain mean would be NaN for a batch without targets


@torch.no_grad()
def response_loss(model: nn.Module, examples, tok, batch_size: int = 32) -> float:
    """Mean nats per assistant token (answers and their <|im_end|>), one unpacked conversation per row.

    Every model is scored on the same tokens whatever it was trained with (mask_everything included).
    """
    block_size = model.cfg.block_size
    rows = encode_examples(tok, examples, block_size)
    if not rows:
        raise DataError("no conversation to score: every example's answer lies beyond the context; "
                        "give examples or a model with a larger block_size")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for idx in sequential_batches(len(rows), batch_size):
            x, y = collate([rows[k] for k in idx], tok.special_tokens[PAD])
            s, n = _token_losses(model, x.to(device), y.to(device))
            total, count = total + s.item(), count + int(n)
    finally:
        model.train(was_training)
    return total / count
