"""Weight-only quantization: store each linear layer's weights in 8, 4 or 2 bits, compute in fp32.

    qmodel = quantize(copy.deepcopy(model), bits=4, group=32)   # every nn.Linear but the output head
    model_bytes(model), model_bytes(qmodel)                     # ~4x (int8) to ~6-7x (int4) smaller layers
    weight_error(model, qmodel)                                 # per layer: how far the stored weights moved
    llmpath efficient quantize                                  # the table on stage 5's GPT (quant_eval.py)

A trained weight matrix W (out_features x in_features) holds fp32 numbers, 4 bytes each. Most of them
are small and close together, so a few bits per number are enough if each row (or piece of a row) gets
its own scale. Symmetric quantization with b bits uses the integers -qmax..qmax, qmax = 2^(b-1) - 1:

    scale = max|w| / qmax            over one output channel (a row of W), or over a group of `group`
                                     consecutive input columns of that row
    q     = clamp(round(w / scale), -qmax, qmax)      stored: b bits per weight
    w'    = q * scale                                 what the layer computes with

Rounding moves each weight by at most half a step: |w - w'| <= scale / 2, and the largest |w| of the row
or group maps to exactly +-qmax, so it comes back exact. Bits and the step size:
    int8, qmax 127: per output channel is enough; 255 levels, the step is max|w| / 127.
    int4, qmax 7:   15 levels; one outlier in a row would make the step coarse for the whole row,
                    so rows are cut into groups of 32-128 columns, each with its own scale.
    2-bit, qmax 1:  only -1, 0, +1 times the scale; most small weights round to 0 and the model breaks
                    (quant_eval.py shows where).
A group costs one fp32 scale (4 bytes) besides its weights: int4 with group 32 stores 4 + 32/32 = 5 bits
per weight (llama.cpp's Q4_0 keeps fp16 scales: 4.5). int4 values are packed two per byte, 2-bit values
four per byte (pack_int4, pack_int2).

torchao (and PyTorch's quantize_per_channel) divide by 127.5 and 7.5 instead and use the one extra
negative level (-128, -8); q then differs from ours by at most one step (tests/test_efficient_quant.py).

"Weight-only" means activations stay fp32: QuantLinear keeps the small form and turns it back into fp32
weights in every forward, then calls F.linear. That dequantisation is extra work (one pass over the
weights, a fresh fp32 weight per call), so on a CPU our quantized model is smaller but not faster; the speed
of weight-only quantization comes from kernels that read the small weights straight into the matmul
(memory bandwidth is what generation waits for), as GPU kernels and llama.cpp's CPU kernels do.
benchmarks/bench_quant.py measures ours against fp32, torchao and torch's quantize_dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QMAX = {8: 127, 4: 7, 2: 1}  # symmetric levels -qmax..qmax: 2^(b-1) - 1


def check_bits(bits: int) -> None:
    if bits not in QMAX:
        raise ValueError(f"bits={bits} is not supported; choose one of 8, 4, 2")


def quantize_weight(w: Tensor, bits: int, group: int | None = None) -> tuple[Tensor, Tensor]:
    """(out, in) weights -> q (out, in) int8 in -qmax..qmax and scale (out, in // group), or (out, 1) per channel.

    quantize_weight(torch.tensor([[0.5, -1.0, 0.25, 0.0]]), 8) -> q [[64, -127, 32, 0]], scale [[1/127]]
    """
    check_bits(bits)
    out, n = w.shape
    group = group or n  # per output channel: one group spanning the whole row
    if n % group:
        raise ValueError(f"group {group} does not divide in_features {n}; choose a divisor such as 32 or 64")
    wg = w.detach().reshape(out, n // group, group)  # (out, groups, group)
    # a row or group of zeros would give scale 0; any positive scale stores it exactly as q = 0
    scale = (wg.abs().amax(-1) / QMAX[bits]).clamp(min=torch.finfo(w.dtype).tiny)  # (out, groups)
    q = (wg / scale[..., None]).round().clamp(-QMAX[bits], QMAX[bits])
    return q.to(torch.int8).reshape(out, n), scale


def dequantize_weight(q: Tensor, scale: Tensor) -> Tensor:
    """q (out, in) and scale (out, groups) -> fp weights (out, in): each group of columns times its scale."""
    out, n = q.shape
    groups = scale.shape[1]
    return (q.reshape(out, groups, n // groups).to(scale.dtype) * scale[..., None]).reshape(out, n)


def _pack(q: Tensor, bits: int) -> Tensor:
    """Signed b-bit values (..., n) -> uint8 (..., ceil(n / (8 // b))): the first value in the lowest bits."""
    per = 8 // bits
    pad = -q.shape[-1] % per
    u = (F.pad(q, (0, pad)).to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8)  # -8..7 -> 0..15 (int4)
    u = u.reshape(*q.shape[:-1], -1, per)  # (..., bytes, values per byte)
    packed = torch.zeros(u.shape[:-1], dtype=torch.uint8, device=q.device)
    for i in range(per):
        packed |= u[..., i] << (bits * i)
    return packed


def _unpack(packed: Tensor, bits: int, n: int | None = None) -> Tensor:
    """The inverse of _pack: uint8 (..., bytes) -> int8 (..., n); n defaults to every value the bytes hold."""
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)  # 0, 4 or 0, 2, 4, 6
    u = (packed[..., None] >> shifts) & (2 ** bits - 1)  # (..., bytes, per)
    q = u.reshape(*packed.shape[:-1], -1).to(torch.int8) - 2 ** (bits - 1)
    return q[..., :n] if n is not None else q


def pack_int4(q: Tensor) -> Tensor:
    """int8 values in -8..7 (..., n) -> uint8 (..., n/2): two per byte. pack_int4(tensor([-1, 7])) -> tensor([247])"""
    return _pack(q, 4)


def unpack_int4(packed: Tensor, n: int | None = None) -> Tensor:
    """uint8 (..., bytes) -> int8 (..., n) in -8..7."""
    return _unpack(packed, 4, n)


def pack_int2(q: Tensor) -> Tensor:
    """int8 values in -2..1 (..., n) -> uint8 (..., n/4): four per byte."""
    return _pack(q, 2)


def unpack_int2(packed: Tensor, n: int | None = None) -> Tensor:
    """uint8 (..., bytes) -> int8 (..., n) in -2..1."""
    return _unpack(packed, 2, n)


class QuantLinear(nn.Module):
    """nn.Linear whose weights are stored as b-bit integers plus scales; the bias stays fp32."""

    def __init__(self, in_features: int, out_features: int, bits: int = 8, group: int | None = None,
                 bias: bool = True):
        super().__init__()
        check_bits(bits)
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        n = out_features * in_features
        groups = in_features // group if group else 1
        # buffers, not parameters: integers are not trained, but they move with .to() and go into state_dict
        self.register_buffer("qweight", torch.zeros(n // (8 // bits) + (n % (8 // bits) > 0), dtype=torch.uint8)
                             if bits < 8 else torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group: int | None = None) -> QuantLinear:
        """The quantized twin of a trained nn.Linear (its weights rounded, its bias copied)."""
        m = cls(linear.in_features, linear.out_features, bits, group, linear.bias is not None)
        q, scale = quantize_weight(linear.weight, bits, group)
        m.qweight = q if bits == 8 else _pack(q.reshape(-1), bits)  # int4 / 2-bit: the whole matrix, flattened
        m.scale = scale
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone())
        return m.to(linear.weight.device)

    def int_weight(self) -> Tensor:
        """The stored integers as an int8 (out, in) matrix."""
        if self.bits == 8:
            return self.qweight
        n = self.out_features * self.in_features
        return _unpack(self.qweight, self.bits, n).reshape(self.out_features, self.in_features)

    def weight(self) -> Tensor:
        """The fp32 weights this layer computes with: q * scale."""
        return dequantize_weight(self.int_weight(), self.scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight().to(x.dtype), self.bias)  # a full fp32 weight, rebuilt every call

    def extra_repr(self) -> str:
        how = f"group={self.group}" if self.group else "per output channel"
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {how}"


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def quantize(model: nn.Module, bits: int = 8, group: int | None = None,
             skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace every nn.Linear of model (in place) by a QuantLinear, except those named in `skip`; returns model.

    `skip` keeps the output head in fp32 by default: in GPT and our Llama it is tied to the token embedding,
    so quantizing it would add a second (small) copy of that table rather than shrink anything. Pass a
    deep copy to keep the original: quantize(copy.deepcopy(model), bits=4, group=32).
    """
    check_bits(bits)
    if group is not None and group < 1:
        raise ValueError(f"group={group} must be a positive number of input columns (or None: per output channel)")
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not _skipped(name, skip)]
    for name, m in targets:  # every check before the first layer changes: an error leaves the model as it was
        if group and m.in_features % group:
            divisors = [d for d in (32, 64, 128, 16, 8) if m.in_features % d == 0][:2] or [m.in_features]
            raise ValueError(f"group {group} does not divide in_features {m.in_features} of {name}; "
                             f"choose a divisor such as {' or '.join(map(str, divisors))}")
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(m, bits, group))
    return model


def _stored_bytes(t: Tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's quantized weights) counts the tensors inside it."""
    if type(t) not in (Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_stored_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    return t.numel() * t.element_size()


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers as stored (a tied weight counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += _stored_bytes(t)
    return total


@torch.no_grad()
def weight_error(model_fp: nn.Module, model_q: nn.Module, outlier_factor: float = 3.0) -> dict[str, dict]:
    """Per quantized layer: max, mean and sum of |w - w'|, its rows, and the outlier rows (max|w| > outlier_factor x the
    median row's) with their share of the rows and of the summed error.

    An outlier row gets a coarse step of its own; with per-channel int8 the other rows do not notice, but
    its error is outlier_factor times theirs or more, so a small share of rows carries a large share of the error.
    """
    fp = dict(model_fp.named_modules())
    out = {}
    for name, m in model_q.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        w = fp[name].weight.float()
        err = (w - m.weight().float()).abs()  # (out, in)
        row_max = w.abs().amax(1)
        outliers = row_max > outlier_factor * row_max.median()
        out[name] = {"max": err.max().item(), "mean": err.mean().item(), "sum": err.sum().item(), "rows": len(w),
                     "outlier_rows": int(outliers.sum()),
                     "outlier_row_share": outliers.float().mean().item(),
                     "outlier_error_share": (err[outliers].sum() / err.sum().clamp(min=1e-30)).item()}
    return out
