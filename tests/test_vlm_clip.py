"""Stage 13 CLIP: the symmetric InfoNCE against Hugging Face's and a closed form, repeated captions as positives,
the logit-scale gradient, the text encoder's padding and pooling, the image side against the ViT, recall@k against
a brute-force loop, zero-shot classification on a hand-built model, the batches and a tiny run end to end."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb
from torch import nn

from llmpath.config import ConfigError, build_config
from llmpath.vit.model import ViTConfig
from llmpath.vlm.clip import (CLIP, CLIP_PRESETS, CaptionBatches, CLIPConfig, CLIPRun, TextEncoder, TextEncoderConfig,
                              caption_ids, caption_keys, clip_loss, contrastive_loss, embed, prompt_ids, recall_at_k,
                              retrieval_figure, run_clip, same_caption, zero_shot)
from llmpath.vlm.data import ZERO_SHOT, CaptionTokenizer

try:
    from transformers.models.clip import modeling_clip
except ImportError:  # the dev extra installs it; without it only the comparison is skipped
    modeling_clip = None
needs_hf = pytest.mark.skipif(modeling_clip is None, reason="needs transformers (pip install -e .[dev])")

TEXT = TextEncoderConfig(vocab_size=20, pad_id=0, block_size=12, n_layer=2, n_head=2, n_embd=16, n_ff=32)
CFG = CLIPConfig(vit=ViTConfig(image_size=28, patch_size=7, n_layer=1, n_head=2, n_embd=16, n_ff=32), text=TEXT,
                 embed_dim=8, pixel_mean=0.2, pixel_std=0.3)


def model(seed: int = 0, **kw) -> CLIP:
    torch.manual_seed(seed)
    return perturb(CLIP(replace(CFG, **kw)), seed).eval()


def ids_of(rows: list[list[int]], T: int | None = None) -> torch.Tensor:
    """Right-padded (B, T) ids with pad 0."""
    T = T or max(map(len, rows))
    return torch.tensor([r + [0] * (T - len(r)) for r in rows])


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- loss

@needs_hf
def test_loss_without_repeats_equals_hugging_face_clip_loss():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(1)) * 3
    hf = getattr(modeling_clip, "clip_loss", None) or modeling_clip.image_text_contrastive_loss
    ref = hf(logits.T)  # Hugging Face takes logits_per_text
    torch.testing.assert_close(contrastive_loss(logits), ref)
    torch.testing.assert_close(contrastive_loss(logits, torch.eye(6, dtype=torch.bool)), ref)


def test_loss_on_two_pairs_is_the_closed_form():
    a, b, c, d = 2.0, -1.0, 0.5, 3.0
    logits = torch.tensor([[a, b], [c, d]])
    i2t = (math.log(math.exp(a) + math.exp(b)) - a + math.log(math.exp(c) + math.exp(d)) - d) / 2
    t2i = (math.log(math.exp(a) + math.exp(c)) - a + math.log(math.exp(b) + math.exp(d)) - d) / 2
    assert contrastive_loss(logits).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_repeated_captions_are_positives_with_a_uniform_target():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 4, generator=g) * 2
    keys = torch.tensor([5, 1, 5, 2])  # pairs 0 and 2 share a caption
    same = same_caption(keys)
    # the stated formula, term by term: row i's target is 1/n_i on every j with the same caption
    want = 0.0
    for L in (logits, logits.T):
        logp = L.log_softmax(1)
        for i in range(4):
            pos = [j for j in range(4) if keys[j] == keys[i]]
            want += -sum(logp[i, j] for j in pos) / len(pos) / 4
    got = contrastive_loss(logits, same)
    assert got.item() == pytest.approx(want.item() / 2, rel=1e-6)
    assert abs(got.item() - contrastive_loss(logits).item()) > 1e-3  # the plain diagonal target differs

    # the gradient pulls image 0 towards text 2 (its caption's twin); the plain diagonal target pushes it away
    for target, sign in ((same, -1), (None, 1)):
        L = logits.clone().requires_grad_()
        contrastive_loss(L, target).backward()
        assert torch.sign(L.grad[0, 2]).item() == sign


def test_clip_loss_finds_repeats_in_the_ids_or_takes_keys():
    m = model()
    x = images(3)
    ids = ids_of([[3, 4, 2], [5, 2], [3, 4, 2]])  # rows 0 and 2: the same caption
    logits = m(x, ids)
    torch.testing.assert_close(clip_loss(m, (x, ids)), contrastive_loss(logits, same_caption(ids)))
    assert same_caption(ids).tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    # a zh and an en caption of the same scene content: different ids, one key
    torch.testing.assert_close(clip_loss(m, (x, ids, torch.tensor([0, 1, 1]))),
                               contrastive_loss(logits, same_caption(torch.tensor([0, 1, 1]))))


def test_logit_scale_gradient_matches_finite_differences():
    m = model().double()
    x, ids = images(4).double(), ids_of([[3, 4, 2], [5, 2], [6, 7, 8, 2], [9, 2]])
    loss = clip_loss(m, (x, ids))
    (g,) = torch.autograd.grad(loss, m.logit_scale)
    eps = 1e-6
    with torch.no_grad():
        s = m.logit_scale.item()
        m.logit_scale.fill_(s + eps)
        up = clip_loss(m, (x, ids)).item()
        m.logit_scale.fill_(s - eps)
        down = clip_loss(m, (x, ids)).item()
    assert g.item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    assert abs(g.item()) > 1e-4


def test_logit_scale_starts_at_one_over_the_temperature_and_is_capped():
    m = CLIP(CFG).eval()
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1000.0))
    assert m.scale().item() == pytest.approx(100.0, rel=1e-5)
    x, ids = images(2), ids_of([[3, 2], [4, 2]])
    torch.testing.assert_close(m(x, ids), 100 * m.encode_image(x) @ m.encode_text(ids).T)


# ----------------------------------------------------------------------------- encoders

def test_text_encoder_ignores_extra_padding_and_reads_the_eos_token():
    torch.manual_seed(0)
    enc = perturb(TextEncoder(TEXT)).eval()
    rows = [[3, 4, 5, 2], [6, 2], [7, 8, 9, 10, 11, 2]]
    short, long = ids_of(rows), ids_of(rows, T=12)
    out = enc(short)
    torch.testing.assert_close(enc(long), out, atol=1e-5, rtol=1e-5)
    # each row alone (no padding at all) gives the same vector: the pads changed nothing
    for b, r in enumerate(rows):
        torch.testing.assert_close(enc(torch.tensor([r]))[0], out[b], atol=1e-5, rtol=1e-5)
    # the pooled vector is the final-LayerNorm output at the last real token
    h = enc.drop(enc.tok(short) + enc.pos(torch.arange(short.shape[1])))
    for layer in enc.layers:
        h = layer(h, (short != 0)[:, None, None, :])
    h = enc.norm(h)
    torch.testing.assert_close(out, torch.stack([h[b, len(r) - 1] for b, r in enumerate(rows)]))
    # a real token does change it (the test above could fail)
    assert not torch.allclose(enc(ids_of([[3, 4, 9, 2]])), out[:1], atol=1e-3)
    with pytest.raises(ValueError, match="block_size"):
        enc(torch.ones(1, 13, dtype=torch.long))


def test_image_features_are_the_vits_cls_output_before_the_projection():
    m = model()
    x = images(3)
    feats = m.image_features(x)
    torch.testing.assert_close(feats, m.vit.features((x - 0.2) / 0.3)[:, 0])
    emb = m.encode_image(x)
    torch.testing.assert_close(emb, F.normalize(feats @ m.image_proj.weight.T, dim=-1))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert m.image_proj.bias is None and m.text_proj.bias is None


# ----------------------------------------------------------------------------- metrics

def test_recall_at_k_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(3)
    img, txt = F.normalize(torch.randn(12, 4, generator=g), dim=-1), F.normalize(torch.randn(12, 4, generator=g), dim=-1)
    captions = ["a", "b", "c", "a", "d", "b", "e", "f", "a", "g", "h", "c"]
    for same in (None, captions):
        key = list(range(12)) if same is None else captions
        # image -> text: each distinct caption once, as its first pair's text; text -> image: every image
        texts = [j for j in range(12) if key[j] not in key[:j]]
        got = recall_at_k(img, txt, (1, 3, 5), same=same)
        for k in (1, 3, 5):
            i2t = t2i = 0
            for i in range(12):
                ranked = sorted(texts, key=lambda j: -float(img[i] @ txt[j]))[:k]
                i2t += any(key[j] == key[i] for j in ranked)
                ranked = sorted(range(12), key=lambda j: -float(txt[i] @ img[j]))[:k]
                t2i += any(key[j] == key[i] for j in ranked)
            assert got[f"i2t@{k}"] == pytest.approx(i2t / 12), (k, same is None)
            assert got[f"t2i@{k}"] == pytest.approx(t2i / 12), (k, same is None)
    assert recall_at_k(img, img, (1,)) == {"i2t@1": 1.0, "t2i@1": 1.0}
    assert recall_at_k(img, img, (1,), same=captions)["t2i@1"] == 1.0


class _DigitFromPixel(nn.Module):
    """A hand-built 'ViT': the digit is written in pixel (0, 0) as d / 10; returns its one-hot."""

    def forward(self, x):
        return F.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float()


class _DigitFromTokens(nn.Module):
    """A hand-built text encoder: the one-hot of the digit token in the prompt."""

    def __init__(self, digit_ids: list[int]):
        super().__init__()
        self.register_buffer("digit_ids", torch.tensor(digit_ids))

    def forward(self, ids):
        return (ids[:, :, None] == self.digit_ids).any(1).float()  # (B, 10)


def test_zero_shot_returns_the_class_of_the_nearest_prompt():
    tok = CaptionTokenizer.build([t.format(d=d) for t in ZERO_SHOT.values() for d in range(10)])
    m = CLIP(replace(CFG, embed_dim=10, vit=replace(CFG.vit, n_embd=10, n_head=2, n_ff=8), pixel_mean=0.0,
                     pixel_std=1.0, text=replace(TEXT, n_embd=10, n_head=2, block_size=16)))
    m.vit = _DigitFromPixel()
    m.text = _DigitFromTokens([tok.stoi[str(d)] for d in range(10)])
    with torch.no_grad():
        m.image_proj.weight.copy_(torch.eye(10))
        m.text_proj.weight.copy_(torch.eye(10))
    labels = torch.tensor([7, 0, 3, 3, 9, 1])
    x = torch.zeros(6, 1, 28, 28)
    x[:, 0, 0, 0] = labels / 10
    for lang in ("zh", "en"):
        prompts = prompt_ids(tok, lang)
        assert prompts.shape[0] == 10 and (prompts == tok.eos_id).sum() == 10
        assert zero_shot(m, x, prompts).tolist() == labels.tolist()
        # the prompts in another order: the predictions are the row numbers of the right prompts
        order = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
        pred = zero_shot(m, x, prompts[order])
        assert order[pred].tolist() == labels.tolist()
    with pytest.raises(ConfigError, match="zh, en"):
        prompt_ids(tok, "fr")


# ----------------------------------------------------------------------------- data and run

def test_caption_batches_mix_languages_share_keys_and_trim_padding():
    caps = {"zh": ["左边是 3，右边是 7", "左边是 1，右边是 2", "左边是 3，右边是 7", "左边是 4，右边是 4"],
            "en": ["a 3 to the left of a 7", "a 1 to the left of a 2", "a 3 to the left of a 7",
                   "a 4 to the left of a 4"]}
    tok = CaptionTokenizer.build(caps["zh"] + caps["en"])
    ids = {lang: caption_ids(c, tok) for lang, c in caps.items()}
    assert (ids["zh"][0] != tok.pad_id).sum() == len(tok.encode(caps["zh"][0])) + 1  # caption + <eos>, no <bos>
    keys = caption_keys(caps["zh"])
    assert keys.tolist() == [1, 0, 1, 2]
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    b = CaptionBatches(x, ids, keys, batch_size=4, pad_id=tok.pad_id, seed=0)
    seen = set()
    for i in range(6):
        xb, ib, kb = b(i)
        torch.testing.assert_close(b(i)[1], ib)  # a pure function of i
        rows = xb[:, 0, 0, 0].long()
        assert kb.tolist() == keys[rows].tolist()
        for r, row in zip(rows.tolist(), ib):
            text = tok.decode(row.tolist())
            assert text in (caps["zh"][r], caps["en"][r])
            seen.add("zh" if text == caps["zh"][r] else "en")
        assert (ib[:, -1] != tok.pad_id).any()  # no column of pads only
    assert seen == {"zh", "en"}


def test_bad_options_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="min_objects"):
        build_config(CLIPRun, ["--preset=tiny", "--min_objects=4", "--max_objects=3"], CLIP_PRESETS)
    with pytest.raises(ConfigError, match="n_head"):
        build_config(CLIPRun, ["--preset=tiny", "--model.text.n_head=3"], CLIP_PRESETS)


def test_tiny_run_trains_reports_and_is_reused(tmp_path):
    cfg = build_config(CLIPRun, ["--preset=tiny", f"--out={tmp_path}"], CLIP_PRESETS)
    res = run_clip(cfg)
    for k in ("test_zh_i2t@1", "test_zh_t2i@5", "test_en_i2t@5", "zero_shot_zh", "zero_shot_en", "seconds", "val_r1"):
        assert 0 <= res[k] <= (1 if k != "seconds" else 60), k
    assert (tmp_path / "vlm" / "tiny-clip" / "ckpt" / "best.pt").exists()
    assert all(p.endswith(".png") for p in res["figures"])
    assert run_clip(cfg) == res  # finished: reused, not trained again
    with pytest.raises(ConfigError, match="block_size"):
        run_clip(build_config(CLIPRun, ["--preset=tiny", f"--out={tmp_path}", "--name=short",
                                        "--model.text.block_size=5"], CLIP_PRESETS))


def test_retrieval_figure_draws_one_row_per_distinct_caption():
    caps = ["左边是 1，右边是 2", "左边是 3，右边是 4", "左边是 1，右边是 2", "左边是 5，右边是 6"]
    tok = CaptionTokenizer.build(caps)
    m = CLIP(replace(CFG, text=replace(TEXT, vocab_size=tok.vocab_size))).eval()
    fig = retrieval_figure(m, images(4), caps, tok, n=3, k=2)
    assert len(fig.axes) == 3 * 2
    assert embed(m, images=images(4)).shape == (4, CFG.embed_dim)
