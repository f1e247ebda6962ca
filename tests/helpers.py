"""Small helpers shared by the test files (tests/ is on sys.path under pytest's default import mode)."""

import torch
from torch import nn


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Add noise to every parameter (LayerNorms and zero biases included), so no layer is an identity by chance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def one_line_error(capsys) -> str:
    """stderr is exactly one `error: ...` line and no traceback (a bad input refused before any work)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err
