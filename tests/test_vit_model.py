"""Stage 7 ViT model: the two patch cuts agree, positions, the ViT against Hugging Face's ViTForImageClassification
(logits both attention paths, gradients of every parameter, folders both ways, the transformers 4 names), what
position encodings do (with none and mean pooling the model cannot tell where a patch was), attention rollout, the
CNN. Data and CLI tests are in test_vit.py."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpath.config import ConfigError
from llmpath.vit.cnn import CNN, CNNConfig
from llmpath.vit.hf import config_from_hf, config_to_hf, from_hf, from_hf_state_dict, to_hf, to_hf_state_dict
from llmpath.vit.model import (ViT, ViTConfig, attention_rollout, auto_patch_size, patchify, sincos_1d, sincos_2d,
                               unpatchify)

from helpers import perturb

try:
    import transformers
except ImportError:  # the dev extra installs it; without it only the comparisons are skipped
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="needs transformers (pip install -e .[dev])")

CFG = ViTConfig(image_size=28, patch_size=7, channels=1, n_classes=10, n_layer=2, n_head=4, n_embd=32, n_ff=64)


def ours(seed: int = 0, **kw) -> ViT:
    torch.manual_seed(seed)
    return perturb(ViT(replace(CFG, **kw)), seed).eval()


def images(n: int = 3, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- patches

def test_patchify_lays_out_patches_row_major_channel_row_column():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)  # 2 channels, 2x2 grid of 2x2 patches
    p = patchify(x, 2)
    assert p.shape == (1, 4, 8)
    # patch 1 is the top-right one: rows 0-1, columns 2-3 of channel 0, then of channel 1
    assert p[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    torch.testing.assert_close(unpatchify(p, 2, 2), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_conv2d_and_unfold_patch_embeddings_agree(channels):
    cfg = replace(CFG, channels=channels)
    fast = ours(channels=channels, patchify="conv")
    slow = ViT(replace(cfg, patchify="unfold"))
    slow.load_state_dict(fast.state_dict())
    x = images(4, channels)
    assert fast.patch_embed.mode == "conv" and slow.patch_embed.mode == "unfold"
    torch.testing.assert_close(slow.patch_embed(x), fast.patch_embed(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(slow.eval()(x), fast(x), atol=1e-5, rtol=1e-5)


def test_a_patch_size_that_does_not_divide_is_a_config_error():
    with pytest.raises(ConfigError, match="does not divide --image_size=28; choose a divisor"):
        replace(CFG, patch_size=5).check()
    assert auto_patch_size(28) == 7 and auto_patch_size(8) == 2 and auto_patch_size(32) == 8


# --------------------------------------------------------------------------- positions

def test_sincos_2d_gives_rows_and_columns_half_the_channels_each():
    pe = sincos_2d(4, 16)  # 16 patches, row-major
    assert pe.shape == (16, 16)
    torch.testing.assert_close(pe[:, :8], sincos_1d(torch.arange(4).repeat_interleave(4), 8))  # the row's half
    torch.testing.assert_close(pe[:, 8:], sincos_1d(torch.arange(4).repeat(4), 8))  # the column's half
    assert torch.equal(pe[0, :8], pe[3, :8]) and not torch.equal(pe[0, 8:], pe[3, 8:])  # same row, other column
    torch.testing.assert_close(sincos_1d(torch.tensor([0]), 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ConfigError, match="divisible by 4"):
        replace(CFG, pos="sincos2d", n_embd=30, n_head=3).check()


def _shuffle_patches(x: torch.Tensor, p: int, perm: torch.Tensor) -> torch.Tensor:
    return unpatchify(patchify(x, p)[:, perm], p, x.shape[1])


def test_without_positions_and_with_mean_pooling_patch_order_is_invisible():
    """Attention and mean pooling are permutation-invariant: only a position encoding tells where a patch was."""
    x = images(2)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    blind = ours(pos="none", pool="mean")
    torch.testing.assert_close(blind(_shuffle_patches(x, 7, perm)), blind(x), atol=1e-5, rtol=1e-5)
    for pos in ("learned", "sincos2d"):
        m = ours(pos=pos, pool="mean")
        assert not torch.allclose(m(_shuffle_patches(x, 7, perm)), m(x), atol=1e-3)


def test_mean_pooling_has_no_cls_token_and_sincos_is_a_fixed_buffer():
    m = ours(pool="mean", pos="sincos2d")
    assert m.cls is None and "pos" not in dict(m.named_parameters()) and m.pos.shape == (1, 16, 32)
    assert ours().pos.shape == (1, 17, 32) and ours().cls.shape == (1, 1, 32)


# -------------------------------------------------------------------- Hugging Face

def hf_vit(seed: int = 0, attn: str = "sdpa", **kw):
    torch.manual_seed(seed)
    cfg = config_to_hf(replace(CFG, **kw))
    cfg._attn_implementation = attn
    return perturb(transformers.ViTForImageClassification(cfg), seed).eval()


@needs_hf
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("channels", [1, 3])
def test_logits_equal_hugging_face_both_ways(attn, channels):
    hf = hf_vit(attn=attn, channels=channels)
    mine = from_hf(hf, sdpa=attn == "sdpa")
    x = images(3, channels)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), hf(pixel_values=x).logits, atol=1e-5, rtol=1e-5)
    back = hf_vit(seed=1, attn=attn, channels=channels)  # other weights, then ours copied in
    back.load_state_dict(to_hf_state_dict(mine))
    with torch.no_grad():
        torch.testing.assert_close(back(pixel_values=x).logits, mine(x), atol=1e-5, rtol=1e-5)


@needs_hf
def test_loss_and_every_gradient_equal_hugging_face():
    hf = hf_vit()
    mine = from_hf(hf)
    x, y = images(4), torch.tensor([3, 1, 4, 1])
    loss = F.cross_entropy(mine(x), y)
    loss.backward()
    out = hf(pixel_values=x, labels=y)
    out.loss.backward()
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)
    theirs = dict(hf.named_parameters())
    for name, p in mine.named_parameters():
        hf_name = to_hf_state_dict_name(name)
        torch.testing.assert_close(p.grad, theirs[hf_name].grad, atol=1e-5, rtol=1e-4, msg=name)


def to_hf_state_dict_name(name: str) -> str:
    (only,) = to_hf_state_dict_names([name])
    return only


def to_hf_state_dict_names(names: list[str]) -> list[str]:
    from llmpath.vit.hf import _TO_HF, _rename

    return [_rename(n, _TO_HF) for n in names]


@needs_hf
def test_export_is_read_by_from_pretrained_and_read_back(tmp_path):
    mine = ours()
    to_hf(mine, tmp_path / "hf")
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, mine(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(from_hf(tmp_path / "hf")(x), mine(x), atol=1e-6, rtol=1e-6)
    assert config_from_hf(hf.config).n_classes == 10


def test_transformers_4_names_are_read_too():
    sd = to_hf_state_dict(ours())
    old = {}
    for k, v in sd.items():
        k = (k.replace("vit.layers.", "vit.encoder.layer.").replace("attention.q_proj", "attention.attention.query")
             .replace("attention.k_proj", "attention.attention.key").replace("attention.v_proj", "attention.attention.value")
             .replace("attention.o_proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense")
             .replace("mlp.fc2", "output.dense"))
        old[k] = v
    assert "vit.encoder.layer.1.attention.attention.query.weight" in old
    mine = ours().state_dict()
    back = from_hf_state_dict(old)
    assert back.keys() == mine.keys() and all(torch.equal(back[k], mine[k]) for k in mine)


def test_what_hugging_face_has_no_place_for_is_refused():
    with pytest.raises(ValueError, match="learned positions and a \\[CLS\\] head"):
        to_hf_state_dict(ours(pos="sincos2d"))
    with pytest.raises(ValueError, match="no place in our ViT"):
        from_hf_state_dict({"vit.pooler.dense.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="exact \\(erf\\) GELU"):
        config_from_hf({**config_to_hf(CFG).to_dict(), "hidden_act": "gelu_new"} if transformers else
                       {"hidden_act": "relu"})


# --------------------------------------------------------------------- attention, CNN

def test_hand_written_attention_equals_sdpa_and_rollout_rows_are_distributions():
    fast = ours()
    slow = ViT(replace(CFG, sdpa=False))
    slow.load_state_dict(fast.state_dict())
    x = images(2)
    torch.testing.assert_close(slow.eval()(x), fast(x), atol=1e-5, rtol=1e-5)
    maps = slow.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 17, 17)
    roll = attention_rollout(maps)
    torch.testing.assert_close(roll.sum(-1), torch.ones(2, 17))
    # without the residual mixing it is the plain product of the head-averaged maps
    torch.testing.assert_close(attention_rollout(maps, residual=False), maps[1].mean(1) @ maps[0].mean(1))


def test_cnn_shapes_and_parameter_count():
    cfg = CNNConfig(c1=16, c2=32, hidden=80)
    cnn = CNN(cfg)
    expected = (1 * 25 + 1) * 16 + (16 * 25 + 1) * 32 + (32 * 7 * 7 + 1) * 80 + (80 + 1) * 10
    assert sum(p.numel() for p in cnn.parameters()) == expected == 139_578
    a1, a2 = cnn.feature_maps(images(2))
    assert a1.shape == (2, 16, 28, 28) and a2.shape == (2, 32, 14, 14) and cnn(images(2)).shape == (2, 10)
    assert CNN(CNNConfig(image_size=8, channels=3))(images(1, 3, 8)).shape == (1, 10)
    with pytest.raises(ConfigError, match="must be odd"):
        CNNConfig(kernel=4).check()
