"""word2vec: CBOW and skip-gram, with negative sampling or a full softmax (Mikolov et al., 2013).

    arXiv:1301.3781 (CBOW, skip-gram) and arXiv:1310.4546 (negative sampling, subsampling)
    llmpath word2vec train                # CBOW on the Wikipedia sample, then WordSim-353 / SimLex-999 / analogies

Two tables of vectors: `inp` (v, the word as context or input) and `out` (u, the word as something to predict).
CBOW averages the input vectors of the window and predicts the centre word; skip-gram predicts each context
word from the centre word. Negative sampling replaces the softmax over the vocabulary by K binary questions:
is this the real word (score u.h up) or a word drawn from the noise table (score down)?

The objectives are loss functions handed to the shared `llmpath.train.fit`; `PairSGD` is word2vec's update
(one SGD step of size lr per example) written as an optimizer for batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llmpath.config import opt


@dataclass
class Word2VecConfig:
    vocab_size: int = opt(0, "words in the vocabulary (set from the data)", min=0)
    n_embd: int = opt(100, "vector dimension", min=1)
    arch: Literal["cbow", "skipgram"] = opt("cbow", "cbow: the window's mean predicts the centre; "
                                            "skipgram: the centre predicts each context word")
    loss: Literal["negative", "softmax"] = opt("negative", "negative sampling, or the full softmax (small vocabularies)")
    cbow_update: Literal["word2vec", "exact"] = opt("word2vec", "CBOW: word2vec hands every context vector the "
                                                    "whole error of the mean; exact: the true gradient, 1/n of it")
    bag: bool = opt(True, "CBOW with negative sampling as one fused op with its gradients written out (fast) "
                    "instead of autograd through gather, mask, average", result=False)
    sparse: bool = opt(False, "sparse embedding gradients (only the rows in the batch), else dense V x C tables",
                       result=False)


class Word2Vec(nn.Module):
    """Input vectors v start uniform in +-0.5/C and output vectors u at zero, as in word2vec."""

    def __init__(self, cfg: Word2VecConfig):
        super().__init__()
        self.cfg = cfg
        V, C = cfg.vocab_size, cfg.n_embd
        self.inp = nn.Embedding(V, C, sparse=cfg.sparse)
        self.out = nn.Embedding(V, C, sparse=cfg.sparse)
        with torch.no_grad():
            self.inp.weight.uniform_(-0.5 / C, 0.5 / C)
            self.out.weight.zero_()

    def hidden(self, b) -> torch.Tensor:
        """What predicts: CBOW (B, C) the mean of the window's input vectors; skip-gram (B, C) the centre's."""
        if self.cfg.arch == "skipgram":
            return self.inp(b.centers)
        n = b.mask.sum(1, keepdim=True).clamp(min=1).to(self.inp.weight.dtype)  # (B, 1) context words per window
        if self.cfg.bag:  # fast: one fused gather-and-sum; padding slots get weight 0
            s = F.embedding_bag(b.contexts, self.inp.weight, per_sample_weights=b.mask.to(n.dtype), mode="sum",
                                sparse=self.cfg.sparse)  # (B, C)
        else:  # readable: gather (B, 2w, C), zero the padding, add up
            s = (self.inp(b.contexts) * b.mask.unsqueeze(-1)).sum(1)  # (B, C)
        if self.cfg.cbow_update == "exact":
            return s / n  # each context vector gets 1/n of the error: the true gradient of the mean
        # word2vec: the value is still the mean, but every context vector gets the whole error (d h / d s = 1)
        return (s / n).detach() + (s - s.detach())

    def vectors(self) -> torch.Tensor:
        """The word vectors people use: the input table (V, C)."""
        return self.inp.weight.detach()


# ------------------------------------------------------------------------------ objectives

def negative_sampling(model: Word2Vec, b) -> torch.Tensor:
    """-log s(u_o.h) - sum_k log s(-u_k.h) per example, averaged over the batch (s = sigmoid).

    CBOW: one example per centre word (o = the centre, h = the window mean). Skip-gram: one example per
    (centre, context) pair (h = v_centre, o = the context word), summed over the window, so that an optimizer
    step of lr * B per batch is word2vec's step of lr per example. By default the K negatives of a centre word
    serve all of its pairs (the expected loss is the same, the gathers 2w times smaller); negatives of shape
    (B, 2w, K) give every pair its own, as word2vec does.
    """
    if model.cfg.arch == "cbow" and model.cfg.bag:  # the same loss and gradients, fused (see FusedCBOW)
        return FusedCBOW.apply(model.inp.weight, model.out.weight, b.contexts, b.mask, b.centers, b.negatives,
                               model.cfg.cbow_update == "exact")
    h = model.hidden(b)  # (B, C)
    if model.cfg.arch == "cbow":
        targets = torch.cat([b.centers[:, None], b.negatives], 1)  # (B, 1+K): the word, then the noise words
        scores = (h[:, None, :] * model.out(targets)).sum(-1)  # (B, 1+K); mul + sum beats bmm for tiny matrices
        return -(F.logsigmoid(scores[:, 0]) + F.logsigmoid(-scores[:, 1:]).sum(1)).mean()
    if b.negatives.dim() == 3:  # (B, 2w, K): word2vec's own K noise words per pair; 2w times the gathers
        targets = torch.cat([b.contexts[..., None], b.negatives], 2)  # (B, 2w, 1+K)
        scores = (h[:, None, None, :] * model.out(targets)).sum(-1)  # (B, 2w, 1+K)
        per_pair = F.logsigmoid(scores[..., 0]) + F.logsigmoid(-scores[..., 1:]).sum(-1)  # (B, 2w)
        return -(per_pair * b.mask).sum(1).mean()
    W = b.contexts.shape[1]
    targets = torch.cat([b.contexts, b.negatives], 1)  # (B, 2w+K): the window's words, then the noise words
    scores = (h[:, None, :] * model.out(targets)).sum(-1)  # (B, 2w+K)
    n = b.mask.sum(1).to(h.dtype)  # (B,) pairs per centre: each pair meets the same K negatives
    return -((F.logsigmoid(scores[:, :W]) * b.mask).sum(1) + n * F.logsigmoid(-scores[:, W:]).sum(1)).mean()


class FusedCBOW(torch.autograd.Function):
    """CBOW's negative-sampling loss as one op whose backward is written out: the fast path (`bag=True`).

    Autograd through gather, mask and average materialises (B, 2w, C) tensors, and the dense backward of an
    embedding sorts its indices; here the window is packed to its M real words once, and the gradients are
    closed forms (those of `negative_sampling_grads`) added into the two tables with `index_add_`:

        g_j = s(u_j.h) - 1[j is the centre]   (B, 1+K)   dL/du_j = g_j h    dL/dh = sum_j g_j u_j
        every context word's input vector gets dL/dh (word2vec) or dL/dh / n (the exact gradient of the mean)

    tests/test_word2vec.py holds it equal to the readable autograd version in value and gradient.
    """

    @staticmethod
    def forward(ctx, inp_w, out_w, contexts, mask, centers, negatives, exact: bool):
        B, W = mask.shape
        real = mask.flatten().nonzero().squeeze(1)  # (M,) the slots that hold a context word
        words = contexts.flatten().index_select(0, real)  # (M,) their ids, window after window
        owner = real.div(W, rounding_mode="floor")  # (M,) the centre each belongs to
        counts = mask.sum(1)  # (B,)
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])  # where each window starts in `words`
        n = counts.clamp(min=1).to(inp_w.dtype).unsqueeze(1)  # (B, 1)
        h = F.embedding_bag(words, inp_w, offsets, mode="sum") / n  # (B, C) the window means
        targets = torch.cat([centers[:, None], negatives], 1)  # (B, 1+K): the word, then the noise words
        u = out_w.index_select(0, targets.flatten()).view(B, targets.shape[1], -1)  # (B, 1+K, C)
        scores = (u * h.unsqueeze(1)).sum(2)  # (B, 1+K)
        signed = torch.cat([scores[:, :1], -scores[:, 1:]], 1)  # the centre's score up, the noise words' down
        ctx.save_for_backward(words, owner, n, h, u, scores, targets)
        ctx.exact, ctx.shapes = exact, (inp_w.shape, out_w.shape)
        return -F.logsigmoid(signed).sum() / B

    @staticmethod
    def backward(ctx, grad):
        words, owner, n, h, u, scores, targets = ctx.saved_tensors
        B, C = h.shape
        g = torch.sigmoid(scores)  # (B, 1+K) dL/dscore, before the 1/B of the mean
        g[:, 0] -= 1
        g *= grad / B
        g_out = h.new_zeros(ctx.shapes[1]).index_add_(0, targets.flatten(), (g.unsqueeze(2) * h.unsqueeze(1)).view(-1, C))
        dh = (g.unsqueeze(2) * u).sum(1)  # (B, C)
        if ctx.exact:
            dh = dh / n
        g_in = h.new_zeros(ctx.shapes[0]).index_add_(0, words, dh.index_select(0, owner))
        return g_in, g_out, None, None, None, None, None


def full_softmax(model: Word2Vec, b) -> torch.Tensor:
    """-log softmax(U h)_o over the whole vocabulary: exact, and V times the work of one score."""
    h = model.hidden(b)  # (B, C)
    logits = h @ model.out.weight.T  # (B, V)
    if model.cfg.arch == "cbow":
        return F.cross_entropy(logits, b.centers)
    logp = F.log_softmax(logits, -1)  # (B, V)
    nll = -logp.gather(1, b.contexts)  # (B, 2w)
    return (nll * b.mask).sum(1).mean()


def loss_fn(model: Word2Vec, b) -> torch.Tensor:
    """The objective the config names: what `fit` is handed."""
    return negative_sampling(model, b) if model.cfg.loss == "negative" else full_softmax(model, b)


def negative_sampling_grads(h: torch.Tensor, u_pos: torch.Tensor, u_neg: torch.Tensor) -> dict:
    """The hand-derived gradients of -log s(u_o.h) - sum_k log s(-u_k.h) for one example (teaching version).

    h (C,), u_pos (C,), u_neg (K, C) -> loss, dL/dh (C,), dL/du_o (C,), dL/du_k (K, C). With s' = s(1 - s):
    dL/du_o = (s(u_o.h) - 1) h,  dL/du_k = s(u_k.h) h,  dL/dh = (s(u_o.h) - 1) u_o + sum_k s(u_k.h) u_k.
    """
    sp, sn = torch.sigmoid(u_pos @ h), torch.sigmoid(u_neg @ h)  # (), (K,)
    loss = -torch.log(sp) - torch.log(1 - sn).sum()
    return {"loss": loss, "h": (sp - 1) * u_pos + sn @ u_neg, "u_pos": (sp - 1) * h, "u_neg": sn[:, None] * h}


# ------------------------------------------------------------------------------ the update

class PairSGD(torch.optim.Optimizer):
    """Plain SGD whose learning rate is per example, like word2vec's alpha: each step moves by lr * B * grad.

    The loss is a mean over B examples, so B * grad is the sum of the examples' gradients: the step equals
    B word2vec updates made at once from the same starting vectors. Sparse gradients touch only their rows.
    """

    def __init__(self, params, lr: float, batch_size: int):
        super().__init__(params, {"lr": lr})
        self.batch_size = batch_size

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * self.batch_size)


def verify_embedding_updates(model: Word2Vec, batch, lr: float = 0.025) -> dict:
    """One PairSGD step on `batch`, checked: only rows of words in the batch change, each by -lr * B * grad.

    Returns {"rows_changed": {"inp": n, "out": n}, "rows_in_batch": {...}, "max_error": float}; raises
    AssertionError if a row outside the batch moved or a row moved by anything but the gradient step.
    """
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss_fn(model, batch).backward()
    grads = {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone() for n, p in model.named_parameters()}
    PairSGD(model.parameters(), lr, len(batch.centers)).step()
    ctx = batch.contexts[batch.mask]
    if model.cfg.arch == "cbow":  # the window is read, the centre predicted
        used = {"inp.weight": _rows(ctx), "out.weight": _rows(batch.centers, batch.negatives)}
    else:  # the centre is read, the window predicted
        used = {"inp.weight": _rows(batch.centers), "out.weight": _rows(ctx, batch.negatives)}
    if model.cfg.loss == "softmax":
        used["out.weight"] = torch.arange(model.cfg.vocab_size)  # the softmax scores every word
    report, err = {"rows_changed": {}, "rows_in_batch": {}}, 0.0
    for name, p in model.named_parameters():
        delta = p.detach() - before[name]
        changed = delta.abs().sum(1).nonzero().flatten()
        outside = set(changed.tolist()) - set(used[name].tolist())
        assert not outside, f"{name}: rows {sorted(outside)[:5]} changed but their words are not in the batch"
        err = max(err, float((delta + lr * len(batch.centers) * grads[name]).abs().max()))
        report["rows_changed"][name] = len(changed)
        report["rows_in_batch"][name] = len(used[name])
    assert err < 1e-6, f"a row moved by {err:g} more or less than -lr * B * grad"
    report["max_error"] = err
    return report


def _rows(*ids: torch.Tensor) -> torch.Tensor:
    return torch.unique(torch.cat([i.flatten() for i in ids]))
