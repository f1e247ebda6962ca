"""LoRA: finetune a frozen model through a small low-rank update of some of its linear layers.

    model = apply_lora(load_run("runs/gpt/small").model, r=8, alpha=16)   # base frozen, adapters trainable
    fit(model, lm_loss, batches, cfg.train, ...)                          # the shared loop trains only A and B
    save_file(lora_state_dict(model), "adapter.safetensors")             # kilobytes, not the whole model
    merge_lora(model)                                                     # W += (alpha/r) B A: no extra cost later

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (https://arxiv.org/abs/2106.09685).
Finetuning changes a weight W (out x in) by some dW. LoRA bets that dW needs only a few directions and
writes it as a product of two thin matrices, A (r x in) and B (out x r), with r much smaller than in and out:

    y = W x + b + (alpha / r) * B (A dropout(x))

W and b stay frozen; only A and B learn: r (in + out) numbers per layer instead of in x out. B starts at
zero, so the adapted model begins as exactly the pretrained one; A starts random (Kaiming-uniform, as
nn.Linear and peft do), so B's gradient is not zero at the first step. The factor alpha / r keeps the
update's size about the same when r changes, so one learning rate serves every r (the paper fixes alpha
once and does not tune it). After training, (alpha / r) B A can be added into W ("merge"): the model is a
plain one again, as fast as before; "unmerge" subtracts it again, to go on training or swap adapters.

The experiment (full finetuning against LoRA at several ranks) is in lora_runs.py.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The attention projections, as the paper adapts: GPT's fused q,k,v and output (attn.c_proj, not the MLP's
# c_proj) and Llama's wq, wk, wv, wo. Add "mlp.c_fc", "mlp.c_proj" or "w1", "w2", "w3" to adapt the MLP too.
# A name matches a target when it is the target or ends in "." + target ("h.0.attn.c_attn" ends in "attn.c_attn").
DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "attn.wq", "attn.wk", "attn.wv", "attn.wo")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = W x + b + (alpha / r) B A dropout(x)."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r={r} must be at least 1 (try r=8)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        # the base's own tensors under the same names, so a LoRA model's state dict is the base's plus the adapters
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))  # zero: the update starts at nothing
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default, as peft
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta(self) -> Tensor:
        """(alpha / r) B A: the (out, in) update that merging adds to the weight."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise RuntimeError("training a merged LoRA layer would never update A and B; "
                                   "call unmerge_lora(model) before training")
            return y  # B A is inside W already
        # (..., in) -> (..., r) -> (..., out): never forms the (out, in) matrix B A
        return y + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta()
            self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha:g}, merged={self.merged}")


def _short(name: str) -> str:
    """The part of a module name after its layer index: 'h.3.attn.c_attn' -> 'attn.c_attn'."""
    return re.sub(r"^.*\.\d+\.", "", name)


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS) -> nn.Module:
    """Freeze every parameter of `model` and wrap each nn.Linear whose name ends in a target; returns model.

    apply_lora(gpt, r=8) -> the same GPT with h.i.attn.c_attn and h.i.attn.c_proj as LoRALinear, in place
    """
    if r < 1:
        raise ValueError(f"LoRA rank r={r} must be at least 1 (try r=8)")
    if alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"LoRA needs alpha > 0 and 0 <= dropout < 1, got alpha={alpha}, dropout={dropout}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"this {type(model).__name__} already has LoRA adapters; apply_lora once per model")
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = [n for n in linears if any(n == t or n.endswith("." + t) for t in targets)]
    if not chosen:
        have = ", ".join(dict.fromkeys(_short(n) for n in linears)) or "none"
        raise ValueError(f"no nn.Linear of this {type(model).__name__} matches targets {', '.join(targets) or '(none)'};"
                         f" its linear layers are: {have}")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for n in chosen:
        if uses[id(linears[n].weight)] > 1:  # GPT's head is the token embedding: merging would change both
            raise ValueError(f"{n}'s weight is tied to another layer (the output head shares the token embedding);"
                             f" merging an adapter into it would change both: leave '{_short(n)}' out of targets")
    model.requires_grad_(False)
    for n in chosen:
        parent, _, child = n.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(linears[n], r, alpha, dropout).train(linears[n].training))  # keep eval() on
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """The model's LoRA layers, or a ValueError when it has none."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError(f"this {type(model).__name__} has no LoRA adapters; call apply_lora(model) first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Add (alpha / r) B A into every adapted weight, in place: the forward pass costs what the base's does."""
    for m in lora_layers(model):
        m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take the updates out of the weights again (up to float rounding), in place."""
    for m in lora_layers(model):
        m.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapters alone: {'h.0.attn.c_attn.lora_A': (r, in), '...lora_B': (out, r), ...}."""
    lora_layers(model)
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def load_lora(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Copy adapters saved by lora_state_dict into a model that apply_lora prepared the same way; in place."""
    own = lora_state_dict(model)
    if any(m.merged for m in lora_layers(model)):
        raise ValueError("the model's adapters are merged into its weights; unmerge_lora(model) before loading others")
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"these adapters do not fit this model (missing: {', '.join(missing[:3]) or 'none'}; "
                         f"unexpected: {', '.join(extra[:3]) or 'none'}); apply_lora with the targets they were "
                         f"trained with")
    for k, v in state.items():
        if v.shape != own[k].shape:
            r = v.shape[0] if k.endswith("lora_A") else v.shape[-1]
            raise ValueError(f"adapter {k} has shape {tuple(v.shape)}, this model's {tuple(own[k].shape)}; "
                             f"apply_lora with the rank it was trained with (r={r})")
    model.load_state_dict(state, strict=False)
    return model


def trainable_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters, tied ones counted once: after apply_lora, trainable = the adapters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
