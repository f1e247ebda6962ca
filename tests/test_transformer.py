"""Stage 4: attention paths agree, our blocks equal torch.nn's, decoding with and without the cache agree."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpath.seq2seq.data import BOS, EOS, PAD
from llmpath.transformer.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention
from llmpath.transformer.decode import beam_search, greedy
from llmpath.transformer.model import (DecoderCache, Transformer, TransformerConfig, from_torch,
                                       label_smoothed_cross_entropy, mha_from_torch, sinusoidal_encoding)

torch.set_num_threads(1)


def _tiny(**kw) -> TransformerConfig:
    base = dict(src_vocab=13, tgt_vocab=11, n_layer=2, n_head=2, n_embd=16, n_ff=24, dropout=0.0, max_len=64)
    base.update(kw)
    return TransformerConfig(**base)


def _src_tgt(B=3, S=7, T=6, lens=(7, 4, 2), tlens=(6, 3, 5), sv=13, tv=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, sv, (B, S), generator=g)
    tgt = torch.randint(4, tv, (B, T), generator=g)
    for i, n in enumerate(lens):
        src[i, n:] = PAD
    for i, n in enumerate(tlens):
        tgt[i, n:] = PAD
    tgt[:, 0] = BOS
    return src, tgt


# ------------------------------------------------------------------ scaled dot-product attention

def test_hand_written_attention_equals_sdpa_path_with_masks_and_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = padding_mask(torch.tensor([[5, 6, 7, 0, 0], [4, 5, 6, 7, 8]]), pad_id=0)  # (2,1,1,5)
    for mask, causal in ((None, False), (pad, False), (None, True), (pad, True)):
        y1, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
        y2, none = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, sdpa=True)
        assert none is None and w.shape == (2, 3, 5, 5)
        torch.testing.assert_close(y1, y2, atol=1e-10, rtol=1e-8)
        g1 = torch.autograd.grad(y1.square().sum(), (q, k, v))
        g2 = torch.autograd.grad(y2.square().sum(), (q, k, v))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
        if mask is not None:  # padded keys get exactly zero weight
            assert float(w.detach()[0, :, :, 3:].abs().max()) == 0.0
        if causal:  # query i never sees key j > i
            assert float(w.detach().masked_select(~causal_mask(5)).abs().max()) == 0.0


def test_attention_weights_are_softmax_of_scaled_scores():
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6, 3)
    _, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(w, torch.softmax(q @ k.T / math.sqrt(8), -1))


# ------------------------------------------------------------------ multi-head attention vs torch.nn

@pytest.mark.parametrize("masked", [False, True])
def test_mha_equals_torch_multihead_attention(masked):
    torch.manual_seed(0)
    C, nh = 16, 4
    ref = nn.MultiheadAttention(C, nh, batch_first=True)
    ours = MultiHeadAttention(C, nh)
    mha_from_torch(ours, ref)
    x = torch.randn(3, 5, C, requires_grad=True)
    mem = torch.randn(3, 7, C, requires_grad=True)
    real = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    # cross-attention with a key padding mask (torch: True = ignore) and self-attention with a causal mask
    kp, am = (~real, ~causal_mask(5)) if masked else (None, None)
    y_ref, w_ref = ref(x, mem, mem, key_padding_mask=kp, average_attn_weights=False)
    y, w = ours(x, kv=mem, mask=padding_mask(real) if masked else None, need_weights=True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    s_ref, _ = ref(x, x, x, attn_mask=am)
    s, _ = ours(x, causal=masked)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)
    (y_ref.sum() + s_ref.square().sum()).backward()
    g_ref = (x.grad.clone(), mem.grad.clone(), ref.in_proj_weight.grad.clone())
    x.grad = mem.grad = None
    (y.sum() + s.square().sum()).backward()
    torch.testing.assert_close(x.grad, g_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mem.grad, g_ref[1], atol=1e-5, rtol=1e-5)
    g_ours = torch.cat([ours.q.weight.grad, ours.k.weight.grad, ours.v.weight.grad])
    torch.testing.assert_close(g_ours, g_ref[2], atol=1e-5, rtol=1e-5)


def test_mha_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


# ------------------------------------------------------------------ whole encoder-decoder vs torch.nn.Transformer

DEPTHS = [(2, 2), (3, 1), (1, 3)]  # (encoder, decoder) layers: nn.Transformer's num_encoder/decoder_layers


def _pair(norm="post", n_enc=2, n_dec=2, seed=0):
    """Our model and an nn.Transformer of the same shape, holding the same weights."""
    torch.manual_seed(seed)
    ref = nn.Transformer(d_model=16, nhead=4, num_encoder_layers=n_enc, num_decoder_layers=n_dec, dim_feedforward=32,
                         dropout=0.0, activation="relu", batch_first=True, norm_first=norm == "pre").eval()
    # equal depths through n_layer alone (every preset and checkpoint); unequal ones set both stacks apart
    depth = dict(n_layer=n_enc) if n_enc == n_dec else dict(n_enc_layer=n_enc, n_dec_layer=n_dec)
    ours = Transformer(_tiny(n_head=4, n_embd=16, n_ff=32, norm=norm, **depth)).eval()
    assert (len(ours.encoder.layers), len(ours.decoder.layers)) == (n_enc, n_dec)
    from_torch(ours, ref)
    return ours, ref


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # nn.Transformer's own note on norm_first
@pytest.mark.parametrize("n_enc,n_dec", DEPTHS)
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_decoder_equals_torch_transformer_outputs_and_gradients(norm, n_enc, n_dec):
    ours, ref = _pair(norm, n_enc, n_dec)
    src, tgt = _src_tgt()
    xs = ours.src_embed(src).detach().requires_grad_(True)  # the same embedded inputs into both stacks
    xt = ours.tgt_embed(tgt).detach().requires_grad_(True)
    T = tgt.shape[1]
    y_ref = ref(xs, xt, tgt_mask=~causal_mask(T), src_key_padding_mask=src == PAD,
                tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD, tgt_is_causal=True)
    y = ours.stacks(xs, xt, padding_mask(src, PAD), padding_mask(tgt, PAD))
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(y)
    (y_ref * w).sum().backward()
    g_ref = (xs.grad.clone(), xt.grad.clone())
    xs.grad = xt.grad = None
    (y * w).sum().backward()
    torch.testing.assert_close(xs.grad, g_ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xt.grad, g_ref[1], atol=1e-5, rtol=1e-5)
    # every weight's gradient: torch's gradients, loaded through from_torch as if they were weights, land
    # where ours are (the map is a copy, or a split of the stacked q; k; v rows, so gradients map the same way)
    grads = copy.deepcopy(ref)
    with torch.no_grad():
        for g, p in zip(grads.parameters(), ref.parameters()):
            g.copy_(p.grad)
    expected = Transformer(ours.cfg)
    from_torch(expected, grads)
    want = dict(expected.named_parameters())
    got = {n: p.grad for n, p in ours.named_parameters() if n.startswith(("encoder.", "decoder."))}
    assert len(got) == sum(1 for n in want if n.startswith(("encoder.", "decoder."))) > 0
    for name, g in got.items():
        torch.testing.assert_close(g, want[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_stack_depths_follow_n_layer_unless_set_apart_and_keys_do_not_change():
    def depths(**kw):
        m = Transformer(_tiny(**kw))
        return len(m.encoder.layers), len(m.decoder.layers)

    assert depths(n_layer=2) == (2, 2) and depths(n_layer=3, n_dec_layer=1) == (3, 1)
    assert depths(n_layer=1, n_enc_layer=2) == (2, 1) and depths(n_layer=1, n_enc_layer=3, n_dec_layer=2) == (3, 2)
    # checkpoints saved before n_enc_layer/n_dec_layer existed: the same keys, and they load strictly
    sd = Transformer(_tiny(n_layer=2)).state_dict()
    assert {"encoder.layers.1.ff.fc2.weight", "decoder.layers.1.cross_attn.q.weight", "decoder.norm.bias"} <= set(sd)
    assert not any(k.startswith(("encoder.layers.2", "decoder.layers.2")) for k in sd)
    Transformer(_tiny(n_layer=1, n_enc_layer=2, n_dec_layer=2)).load_state_dict(sd, strict=True)


def _torch_ref(**kw) -> nn.Transformer:
    """The nn.Transformer that fits _tiny() (2 + 2 layers, d 16, 2 heads, ff 24), with kw changed."""
    base = dict(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=24, dropout=0.0,
                batch_first=True)
    return nn.Transformer(**{**base, **kw})


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("theirs,ours,message", [
    (dict(num_encoder_layers=3), {}, r"num_encoder_layers=3 \(this model 2\); build TransformerConfig\(n_enc_layer=3\)"),
    (dict(num_decoder_layers=1), {}, r"num_decoder_layers=1 \(this model 2\); build TransformerConfig\(n_dec_layer=1\)"),
    (dict(num_encoder_layers=3, num_decoder_layers=3), {}, r"\(this model 2\); build TransformerConfig\(n_layer=3\)"),
    ({}, dict(n_layer=1, n_enc_layer=2, n_dec_layer=1), r"num_decoder_layers=2 .*TransformerConfig\(n_dec_layer=2\)"),
    (dict(norm_first=True), {}, r"norm_first=True \(this model 'post'\); build TransformerConfig\(norm='pre'\)"),
    ({}, dict(norm="pre"), r"norm_first=False \(this model 'pre'\); build TransformerConfig\(norm='post'\)"),
    (dict(d_model=32), {}, r"d_model=32 \(this model 16\); build TransformerConfig\(n_embd=32\)"),
    (dict(nhead=4), {}, r"nhead=4 \(this model 2\); build TransformerConfig\(n_head=4\)"),  # same shapes
    (dict(dim_feedforward=48), {}, r"dim_feedforward=48 \(this model 24\); build TransformerConfig\(n_ff=48\)"),
    (dict(activation="gelu"), {}, r"activation='gelu' \(this model 'relu'\); build TransformerConfig\(activation='gelu'\)"),
    (dict(activation=nn.GELU()), {}, r"activation='gelu'"),
    (dict(activation=torch.tanh), {}, r"activation is 'tanh'; this model has only 'relu' and 'gelu'"),
    (dict(bias=False), {}, r"bias=False \(this model True\); build TransformerConfig\(bias=False\)"),
    (dict(layer_norm_eps=1e-6), {}, r"layer_norm_eps=1e-06 \(this model 1e-05\); .*\(layer_norm_eps=1e-06\)"),
    ({}, dict(final_norm=False), r"a final LayerNorm \(this model False\); build TransformerConfig\(final_norm=True\)"),
    (dict(nhead=4, norm_first=True), {}, r"norm_first=True .*, nhead=4 .*TransformerConfig\(norm='pre', n_head=4\)"),
])
def test_from_torch_refuses_another_shape_before_copying(theirs, ours, message):
    m = Transformer(_tiny(**ours))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=message) as err:
        from_torch(m, _torch_ref(**theirs))
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # nothing was copied


# ------------------------------------------------------------------ components

def test_sinusoidal_encoding_matches_the_formula_and_relative_shift_is_linear():
    pe = sinusoidal_encoding(50, 8)
    p, i = 7, 1
    assert pe[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)
    # PE[p + k] = R_k PE[p] with one 2x2 rotation per frequency, the same for every p
    k, w = 3, 1 / 10000 ** (2 * i / 8)
    rot = torch.tensor([[math.cos(k * w), -math.sin(k * w)], [math.sin(k * w), math.cos(k * w)]])
    for p in (0, 10, 40):
        torch.testing.assert_close(pe[p + k, 2:4], pe[p, 2:4] @ rot, atol=1e-5, rtol=1e-5)


def test_embeddings_are_scaled_and_positions_added():
    m = Transformer(_tiny(pos="sinusoidal")).eval()
    ids = torch.tensor([[4, 5, 6]])
    x = m.src_embed(ids)
    torch.testing.assert_close(x, m.src_embed.tok(ids) * 4.0 + sinusoidal_encoding(64, 16)[:3])
    learned = Transformer(_tiny(pos="learned")).eval()
    assert learned.src_embed.pos.weight.shape == (64, 16)
    none = Transformer(_tiny(pos="none")).eval()
    torch.testing.assert_close(none.src_embed(ids), none.src_embed.tok(ids) * 4.0)
    with pytest.raises(ValueError, match="max_len"):
        m.src_embed(torch.ones(1, 65, dtype=torch.long))


def test_output_head_is_tied_to_target_embedding():
    m = Transformer(_tiny())
    assert m.head.weight is m.tgt_embed.tok.weight
    assert Transformer(_tiny(tie_weights=False)).head.weight is not None
    n_tied = sum(p.numel() for p in m.parameters())
    n_untied = sum(p.numel() for p in Transformer(_tiny(tie_weights=False)).parameters())
    assert n_untied - n_tied == 11 * 16


def test_post_ln_normalises_the_stream_and_pre_ln_does_not():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3 + 1
    for norm in ("post", "pre"):
        m = Transformer(_tiny(norm=norm, n_layer=1)).eval()
        with torch.no_grad():
            y = m.encoder.layers[0](x, torch.ones(2, 1, 1, 5, dtype=torch.bool))
        std = y.std(-1, unbiased=False)
        if norm == "post":
            torch.testing.assert_close(std, torch.ones_like(std), atol=1e-3, rtol=0)
        else:  # pre-LN adds to x: the stream keeps its scale
            assert float(std.mean()) > 2


def test_decoder_is_causal_and_ignores_source_padding():
    torch.manual_seed(0)
    m = Transformer(_tiny()).eval()
    src, tgt = _src_tgt()
    out = m(src, tgt)
    tgt2 = tgt.clone()
    tgt2[:, 4:] = 7  # change the future: the first 4 positions must not move
    torch.testing.assert_close(m(src, tgt2)[:, :4], out[:, :4])
    longer = torch.cat([src, torch.zeros(3, 3, dtype=torch.long)], 1)  # more padding changes nothing
    torch.testing.assert_close(m(longer, tgt), out, atol=1e-6, rtol=1e-5)


def test_label_smoothing_equals_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(20, 9, requires_grad=True)
    target = torch.randint(0, 9, (20,))
    target[::4] = PAD
    for eps in (0.0, 0.1, 0.3):
        ours = label_smoothed_cross_entropy(logits, target, eps)
        ref = F.cross_entropy(logits, target, ignore_index=PAD, label_smoothing=eps)
        torch.testing.assert_close(ours, ref)
        g1 = torch.autograd.grad(ours, logits)[0]
        torch.testing.assert_close(g1, torch.autograd.grad(ref, logits)[0])


# ------------------------------------------------------------------ decoding

def _trained_ish(seed=0, **kw):
    torch.manual_seed(seed)
    m = Transformer(_tiny(**kw)).eval()
    with torch.no_grad():  # sharpen the output so decodes are long and varied, not one token
        m.head.weight.mul_(4)
    return m


@pytest.mark.parametrize("n_enc,n_dec", DEPTHS)
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_cached_decoding_equals_uncached(norm, n_enc, n_dec):
    m = _trained_ish(norm=norm, n_enc_layer=n_enc, n_dec_layer=n_dec)
    src, _ = _src_tgt()
    a, b = greedy(m, src, 20, use_cache=True), greedy(m, src, 20, use_cache=False)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape[1] > 3
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
    a, b = beam_search(m, src, 4, 1.0, 20, use_cache=True), beam_search(m, src, 4, 1.0, 20, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_enc,n_dec", DEPTHS)
def test_cached_step_logits_equal_full_pass(n_enc, n_dec):
    m = _trained_ish(n_enc_layer=n_enc, n_dec_layer=n_dec)
    src, tgt = _src_tgt(tlens=(6, 6, 6))
    memory, src_mask = m.encode(src)
    full = m.decode(tgt, memory, src_mask)
    cache = DecoderCache(m.cfg.dec_depth)
    steps = torch.cat([m.decode(tgt[:, t:t + 1], memory, src_mask, cache) for t in range(tgt.shape[1])], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    assert cache.pos == tgt.shape[1] and len(cache.layers) == n_dec
    assert all(layer["self"]["k"].shape[2] == tgt.shape[1] for layer in cache.layers)


def test_cache_of_another_depth_is_refused():
    m = _trained_ish(n_layer=2, n_dec_layer=3)
    memory, src_mask = m.encode(_src_tgt()[0])
    bos = torch.full((3, 1), BOS)
    for n in (2, 4):  # too few layers would fail mid-stack, too many would leave the surplus silently unused
        with pytest.raises(ValueError, match=rf"DecoderCache has {n} layers, the decoder 3; .*cfg.dec_depth"):
            m.decode(bos, memory, src_mask, DecoderCache(n))


def test_beam_one_is_greedy_and_wider_beam_scores_at_least_as_high():
    m = _trained_ish(seed=3)
    src, _ = _src_tgt()
    g = greedy(m, src, 15)
    assert torch.equal(beam_search(m, src, 1, 1.0, 15).tokens, g.tokens)
    b = beam_search(m, src, 6, 0.0, 15)  # alpha 0: ranked by raw log-probability, like greedy's score
    assert bool((b.scores >= g.scores - 1e-5).all())


def test_greedy_output_ends_with_eos_then_padding():
    m = _trained_ish()
    out = greedy(m, _src_tgt()[0], 30).tokens
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1:])


# ------------------------------------------------------------------ training, CLI

def test_cli_train_eval_translate_figures_tiny(tmp_path, capsys):
    from llmpath.cli import main

    out = str(tmp_path)
    assert main(["transformer", "train", "--preset=tiny", f"--out={out}", "--train.max_steps=3", "--no-progress"]) == 0
    run = tmp_path / "transformer" / "tiny"
    assert (run / "ckpt" / "best.pt").exists() and (run / "results.json").exists()
    assert main(["transformer", "eval", "--preset=tiny", f"--out={out}", "--beam=2"]) == 0
    capsys.readouterr()
    assert main(["transformer", "translate", "我想喝水。", "--preset=tiny", f"--out={out}",
                 "--plot", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").exists()
    assert main(["transformer", "figures", "--preset=tiny", f"--out={out}"]) == 0
    paths = list((run / "figures").glob("*.png"))
    assert {p.name for p in paths} >= {"positional_encoding.png", "attn_encoder.png", "attn_cross.png", "structure.png"}
    assert "合计" in (run / "parameters.md").read_text(encoding="utf-8")


def test_translate_without_a_run_says_train_first(tmp_path):
    from llmpath.config import ConfigError, build_config
    from llmpath.transformer.cli import PRESETS, TranslateRun, translate

    with pytest.raises(ConfigError, match="llmpath transformer train"):
        translate(build_config(TranslateRun, ["--preset=tiny", f"--out={tmp_path}"], PRESETS))


def test_bad_train_fraction_is_a_config_error(tmp_path):
    from llmpath.config import ConfigError, build_config
    from llmpath.transformer.cli import PRESETS, TransformerRun, train

    with pytest.raises(ConfigError, match="train_fraction"):
        train(build_config(TransformerRun, ["--preset=tiny", f"--out={tmp_path}", "--train_fraction=0"], PRESETS))


def test_registered_in_cli_tour_and_doctor():
    from llmpath.doctor import all_checks
    from llmpath.topics import TOPICS
    from llmpath.tour import STAGES
    from llmpath.transformer.cli import smoke

    assert TOPICS["transformer"].cli == "llmpath.transformer.cli" and "topic transformer" in [c[0] for c in all_checks()]
    nums = [s.stage for s in STAGES]
    assert nums.index("3") < nums.index("4") < nums.index("5a")
    assert "cached" in smoke()


def test_training_lowers_the_loss():
    from llmpath.seq2seq.data import collate, load_translation
    from llmpath.transformer.model import transformer_loss

    data = load_translation("dates", seed=0)
    batch = collate(data.train[:32], data.src_vocab, data.tgt_vocab)
    torch.manual_seed(0)
    m = Transformer(_tiny(src_vocab=len(data.src_vocab), tgt_vocab=len(data.tgt_vocab), n_embd=32, n_ff=64))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = transformer_loss(m, batch, 0.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.slow
def test_synthetic_task_learns(tmp_path):
    """Date-format conversion ('2024-03-15' -> '15 march 2024') reaches >= 95% exact match in 200 steps."""
    from llmpath.config import build_config
    from llmpath.transformer.cli import PRESETS, TransformerRun, train

    cfg = build_config(TransformerRun, ["--preset=tiny", "--data=dates", f"--out={tmp_path}", "--train.max_steps=200",
                                        "--n_embd=64", "--n_ff=128", "--n_head=4", "--n_layer=1", "--train.lr=3e-3",
                                        "--train.warmup_steps=20", "--dropout=0", "--label_smoothing=0",
                                        "--train.batch_size=64", "--train.progress=false", "--beam=2"], PRESETS)
    s = train(cfg)
    assert s["test"]["greedy"]["exact_match"] >= 95.0, s["test"]["greedy"]
    assert s["test"]["beam"]["exact_match"] >= 95.0


def test_tour_tiny_returns_a_report(tmp_path):
    from llmpath.transformer.cli import tour

    res = tour("tiny", str(tmp_path))
    assert res.metric.startswith("Transformer test BLEU") and res.value == pytest.approx(
        json.loads((tmp_path / "transformer" / "tiny" / "results.json").read_text())["test"]["greedy"]["bleu"])
    assert "Transformer" in res.table and len(res.figures) == 5
    assert all(Path(p).exists() for p in res.figures)


def test_ablate_and_curve_tables_on_tiny(tmp_path):
    from llmpath.config import build_config
    from llmpath.transformer.cli import FRACTIONS, PRESETS, TransformerRun, ablate, ablations, curve

    cfg = build_config(TransformerRun, ["--preset=tiny", f"--out={tmp_path}", "--train.max_steps=2", "--beam=1",
                                        "--max_len=8"], PRESETS)
    res = ablate(cfg)
    assert list(res["runs"]) == list(ablations(cfg)) and res["table"].count("\n") == len(res["runs"]) + 1
    assert res["runs"]["Pre-LN"]["config"]["model"]["norm"] == "pre" and cfg.model.norm == "post"
    assert res["runs"]["单头注意力"]["config"]["model"]["n_head"] == 1 and (tmp_path / "transformer" / "tiny-no-pos").is_dir()
    assert json.loads((tmp_path / "transformer" / "tiny-ablate" / "results.json").read_text())["table"] == res["table"]
    cur = curve(cfg)
    assert [r["train_pairs"] for r in cur["runs"].values()] == sorted(r["train_pairs"] for r in cur["runs"].values())
    assert len(cur["runs"]) == len(FRACTIONS) and (tmp_path / "transformer" / "tiny-curve" / "results.json").exists()


def test_bar_compares_with_every_stage3_attention_run(tmp_path):
    from llmpath.common import write_json
    from llmpath.transformer.cli import STAGE3_MEASURED, compare_table

    def run(bleu):
        return {"params": 1, "val_loss": 3.0, "train_seconds": 1.0,
                "test": {m: {"bleu": bleu, "chrf": 20.0} for m in ("greedy", "beam")}}

    for att, bleu in (("none", 9.5), ("bahdanau", 6.0), ("dot", 8.5), ("general", 5.0), ("concat", 7.0)):
        (tmp_path / "seq2seq" / f"small-{att}").mkdir(parents=True)
        write_json(tmp_path / "seq2seq" / f"small-{att}" / "results.json", run(bleu))
    table, bar = compare_table(run(8.0), str(tmp_path), "small")
    assert bar["best_stage3"] == ("第 3 章 Luong dot GRU", 8.5) and not bar["passed"]  # no-attention is not a rival
    assert table.count("| 第 3 章") == 5
    # runs below stage 3's measured best (the tour trains only none and Bahdanau) do not lower the bar
    for att in ("dot", "general", "concat"):
        (tmp_path / "seq2seq" / f"small-{att}" / "results.json").unlink()
    table, bar = compare_table(run(7.0), str(tmp_path), "small")
    assert bar["best_stage3"] == STAGE3_MEASURED["small"] and not bar["passed"] and "7.77" in table


def test_bar_without_stage3_runs_uses_stage3_measured_best(tmp_path):
    from llmpath.transformer.cli import STAGE3_MEASURED, compare_table

    ours = {"params": 1, "val_loss": 3.0, "train_seconds": 1.0,
            "test": {m: {"bleu": 8.0, "chrf": 20.0} for m in ("greedy", "beam")}}
    table, bar = compare_table(ours, str(tmp_path), "small")
    assert bar["best_stage3"] == STAGE3_MEASURED["small"] and bar["passed"] and "7.77" in table
    ours["test"]["greedy"]["bleu"] = 7.5
    assert not compare_table(ours, str(tmp_path), "small")[1]["passed"]
    assert not compare_table(ours, str(tmp_path), "tiny")[1]["passed"]  # no reference for tiny: run stage 3 first


# ------------------------------------------------------------------ figures: the sentence the attention maps show

def test_pick_sentence_prefers_an_exact_translation_then_the_best_sentence_bleu():
    from llmpath.seq2seq.data import Example, tokenize_en
    from llmpath.transformer.figures import pick_sentence

    def ex(zh, en):
        return Example(zh, en, list(zh), tokenize_en(en))

    sents = [ex("对不起。没关系。", "Sorry. It's okay."), ex("我想喝水。", "I want to drink water."),
             ex("他是老师。", "He is a teacher.")]
    # case and spacing do not count: the second one is right word for word
    assert pick_sentence(sents, ["Not not for your greetings.", "i want to drink water .", "He is a teacher."], "en") == 1
    # nothing exact: the highest sentence BLEU wins (the third shares the most n-grams with its reference)
    assert pick_sentence(sents, ["Not not.", "I want water.", "He is a good teacher."], "en") == 2
    with pytest.raises(ValueError, match="one translation per sentence"):
        pick_sentence(sents, ["x"], "en")


# ------------------------------------------------------------------ exercises of docs/tutorials/04_transformer.md

def test_exercise_4_1_encoder_without_positions_is_permutation_equivariant():
    torch.manual_seed(0)
    m = Transformer(_tiny(pos="none")).eval()
    src = torch.tensor([[4, 5, 6, 7, 8, 9]])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        memory, _ = m.encode(src)
        memory_perm, _ = m.encode(src[:, perm])
    torch.testing.assert_close(memory_perm, memory[:, perm], atol=1e-6, rtol=1e-5)
    # with sinusoidal positions the same permutation changes the representations, not just their order
    with torch.no_grad():
        pos = Transformer(_tiny(pos="sinusoidal")).eval()
        assert not torch.allclose(pos.encode(src[:, perm])[0], pos.encode(src)[0][:, perm], atol=1e-3)


def test_exercise_4_2_heads_split_the_width_without_new_parameters():
    sizes = {h: sum(p.numel() for p in MultiHeadAttention(128, h).parameters()) for h in (1, 2, 4, 8)}
    assert set(sizes.values()) == {4 * (128 * 128 + 128)} == {66_048}  # the `self_attn` rows of the table
    x = torch.randn(2, 5, 128)
    for h in (1, 2, 4, 8):
        _, w = MultiHeadAttention(128, h)(x, need_weights=True)
        assert w.shape == (2, h, 5, 5)  # h maps of d_k = 128 / h dimensions each


def test_exercise_4_3_without_the_scale_the_softmax_saturates():
    torch.manual_seed(0)
    for d_k in (64, 512):
        q, k, v = torch.randn(1000, 1, d_k), torch.randn(1000, 10, d_k), torch.randn(1000, 10, 4)
        scores = q @ k.transpose(-2, -1)
        assert float(scores.std()) == pytest.approx(math.sqrt(d_k), rel=0.1)  # the dot product's spread grows
        _, scaled = scaled_dot_product_attention(q, k, v)
        unscaled = torch.softmax(scores, -1)
        # mean weight of the strongest key among 10: about 1/3 with the scale, near one-hot without it
        assert float(scaled.max(-1).values.mean()) < 0.4 < 0.8 < float(unscaled.max(-1).values.mean())


def test_exercise_4_4_half_the_small_model_is_its_two_embedding_tables():
    # the small preset's shape with the hsk-pairs vocabularies (1,760 characters, 3,900 English words)
    m = Transformer(TransformerConfig(src_vocab=1760, tgt_vocab=3900, n_layer=2, n_head=4, n_embd=128, n_ff=256))
    total = sum(p.numel() for p in m.parameters())
    emb = sum(p.numel() for p in m.src_embed.parameters()) + sum(p.numel() for p in m.tgt_embed.parameters())
    assert (total, emb) == (1_387_520, 1760 * 128 + 3900 * 128) and round(emb / total, 2) == 0.52
    untied = Transformer(TransformerConfig(src_vocab=1760, tgt_vocab=3900, n_layer=2, n_head=4, n_embd=128, n_ff=256,
                                           tie_weights=False))
    assert sum(p.numel() for p in untied.parameters()) - total == 3900 * 128  # an output table of its own


def test_exercise_4_5_the_cache_feeds_one_position_per_step():
    torch.manual_seed(0)
    m = Transformer(_tiny()).eval()
    src, _ = _src_tgt()
    fed = []
    hook = m.decoder.layers[0].register_forward_pre_hook(lambda mod, args: fed.append(args[0].shape[1]))
    try:
        steps = greedy(m, src, max_len=12, use_cache=False).tokens.shape[1]
        uncached, fed[:] = list(fed), []
        greedy(m, src, max_len=12, use_cache=True)
    finally:
        hook.remove()
    assert uncached == list(range(1, steps + 1))  # the whole prefix again at every step: L (L + 1) / 2 positions
    assert fed == [1] * steps  # one new position per step: L positions


def test_exercise_4_6_with_label_smoothing_a_perfect_model_still_pays_the_targets_entropy():
    V, eps = 3900, 0.1
    q = torch.full((1, V), eps / V)
    q[0, 5] += 1 - eps  # the smoothed target: 1 - eps on the reference word, eps spread over the vocabulary
    entropy = float(-(q * q.log()).sum())
    assert entropy == pytest.approx(1.15, abs=0.01)
    best = label_smoothed_cross_entropy(q.log(), torch.tensor([5]), eps)
    assert float(best) == pytest.approx(entropy, abs=1e-4)
    sharper = torch.full((1, V), -20.0)
    sharper[0, 5] = 20.0  # nearly one-hot: very sure of the right word, and punished for it
    assert float(label_smoothed_cross_entropy(sharper, torch.tensor([5]), eps)) > 3 * entropy
