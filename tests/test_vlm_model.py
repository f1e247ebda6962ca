"""Stage 13 LLaVA-style captioner: the decoder's prefix (a prefix of token embeddings is those tokens; generation
with a prefix: cache == no cache, greedy == argmax of full forwards, one beam == greedy), the attention maps it
collects, the VLM (nested config, image tokens, loss over the caption positions, freezing, captions, attention over
patches), and Hugging Face: LlavaForConditionalGeneration with a ViT tower (logits both ways, loss, gradients, the
ViT hidden states it picks) and our ViT as the encoder of a VisionEncoderDecoderModel."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb

from llmpath.config import ConfigError, TrainConfig, apply_overrides, check_config
from llmpath.generation import KVCache, beam_search, generate, stream
from llmpath.llama.figures import head_attention
from llmpath.llama.model import Llama, LlamaConfig, apply_rope
from llmpath.train import fit
from llmpath.transformer.attention import causal_mask
from llmpath.vit.model import ViTConfig
from llmpath.vlm.data import CaptionTokenizer
from llmpath.vlm.model import VLM, VLMConfig, caption, caption_attention, caption_loss

V = 23
DEC = LlamaConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
VIT = ViTConfig(image_size=16, patch_size=4, channels=3, n_layer=2, n_head=2, n_embd=16, n_ff=32)
TOL = dict(atol=1e-5, rtol=1e-5)


def decoder(seed: int = 0, **kw) -> Llama:
    torch.manual_seed(seed)
    return perturb(Llama(replace(DEC, **kw)), seed).eval()


def vlm(seed: int = 0, **kw) -> VLM:
    torch.manual_seed(seed)
    return perturb(VLM(VLMConfig(**{"vit": VIT, "decoder": DEC, **kw})), seed).eval()


def rand(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ids(B: int, T: int, seed: int = 0, high: int = V) -> torch.Tensor:
    return torch.randint(1, high, (B, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- the decoder's prefix

@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_a_prefix_of_token_embeddings_is_those_tokens(pos):
    m = decoder(1, pos=pos)
    a, b = ids(2, 6, seed=1), ids(2, 9, seed=2)
    full, _ = m(torch.cat([a, b], 1))
    logits, _ = m(b, prefix=m.embed(a))
    assert logits.shape == (2, 9, V)  # the prefix positions predict nothing
    torch.testing.assert_close(logits, full[:, 6:], **TOL)
    cache = KVCache(m.cfg, 2)  # the prefix goes into the cache with the first chunk
    parts = [m(b[:, :4], cache=cache, prefix=m.embed(a))[0], m(b[:, 4:5], cache=cache)[0], m(b[:, 5:], cache=cache)[0]]
    torch.testing.assert_close(torch.cat(parts, 1), full[:, 6:], **TOL)
    assert cache.pos == 15


@pytest.mark.parametrize("variant", [{}, dict(n_expert=4, top_k=2), dict(sdpa=False)])
def test_cached_generation_with_a_prefix_equals_uncached(variant):
    m = decoder(2, **variant)
    prefix, prompt = rand(2, 10, 32, seed=2), ids(2, 3, seed=3)
    for n in (12, 30):  # 30: 10 + 3 + 30 > block_size 32, the cache gives way to recomputing prefix + last 22 tokens
        assert torch.equal(generate(m, prompt, n, prefix=prefix, greedy=True),
                           generate(m, prompt, n, prefix=prefix, greedy=True, use_cache=False))
    kw = dict(temperature=1.3, top_k=12, top_p=0.95, repetition_penalty=1.1, prefix=prefix)
    with_cache = generate(m, prompt, 15, generator=torch.Generator().manual_seed(5), **kw)
    without = generate(m, prompt, 15, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert torch.equal(with_cache, without) and with_cache.shape == (2, 18)
    # the prefix changes what comes out, and a batch-1 prefix serves every row
    assert not torch.equal(generate(m, prompt, 12, greedy=True), generate(m, prompt, 12, prefix=prefix, greedy=True))
    one = generate(m, prompt, 8, prefix=prefix[:1], greedy=True)
    assert torch.equal(one, generate(m, prompt, 8, prefix=prefix[:1].expand(2, -1, -1), greedy=True))


def test_greedy_with_a_prefix_is_the_argmax_of_full_forwards_step_by_step():
    m = decoder(3)
    prefix, seq = rand(2, 8, 32, seed=4), ids(2, 2, seed=5)
    out = generate(m, seq, 10, prefix=prefix, greedy=True)
    for _ in range(10):
        logits, _ = m(seq, prefix=prefix)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
    assert list(stream(m, seq[:1, :2], 10, prefix=prefix[:1], greedy=True)) == out[0, 2:].tolist()


def test_beam_search_with_a_prefix_one_beam_is_greedy_and_cache_free_is_the_same():
    m = decoder(4)
    prefix, prompt = rand(1, 8, 32, seed=6), ids(1, 2, seed=7)
    greedy = generate(m, prompt, 12, prefix=prefix, greedy=True)
    assert torch.equal(beam_search(m, prompt, 1, 12, prefix=prefix), greedy)
    three = beam_search(m, prompt, 3, 12, prefix=prefix)
    assert torch.equal(three, beam_search(m, prompt, 3, 12, prefix=prefix, use_cache=False))
    logp = lambda s: F.log_softmax(m(s[:, :-1], prefix=prefix)[0], -1)[0, 1:].gather(1, s[0, 2:, None]).sum()
    assert logp(three) >= logp(greedy) - 1e-5  # beam search finds at least as likely a continuation


def test_a_prefix_that_fills_the_context_is_refused():
    with pytest.raises(ValueError, match="no room"):
        generate(decoder(), ids(1, 2), 3, prefix=rand(1, 32, 32))
    with pytest.raises(ValueError, match="one prefix"):
        beam_search(decoder(), ids(1, 2), 2, 3, prefix=rand(2, 4, 32))


def test_maps_are_the_hand_written_weights_and_change_nothing():
    m = decoder(5)  # sdpa=True: asking for maps takes the hand-written path for that call
    x = ids(1, 12, seed=8)
    maps: list = []
    torch.testing.assert_close(m.hidden(x, maps=maps), m.hidden(x), **TOL)
    assert len(maps) == 2 and maps[0].shape == (1, 4, 12, 12)
    for layer in range(2):
        for h in range(4):
            torch.testing.assert_close(maps[layer][0, h], head_attention(m, x[0], layer, h), **TOL)


# -------------------------------------------------------------------------------------- VLM

def test_config_nests_vit_and_decoder_options_and_checks_them():
    cfg = apply_overrides(VLMConfig(), {"vit.n_layer": "2", "decoder.n_embd": "64", "projector": "linear"})
    assert (cfg.vit.n_layer, cfg.decoder.n_embd, cfg.projector, cfg.vit.image_size) == (2, 64, "linear", 56)
    assert VLMConfig().vit.n_layer == 4  # the default was copied, not shared
    assert VLMConfig().n_image_tokens == 64 and VLMConfig(drop_cls=False).n_image_tokens == 65
    with pytest.raises(ConfigError, match="feature_layer"):
        check_config(VLMConfig(feature_layer=5))
    with pytest.raises(ConfigError, match="block_size"):
        check_config(VLMConfig(decoder=LlamaConfig(block_size=64)))


@pytest.mark.parametrize("kw", [{}, dict(drop_cls=False), dict(projector="linear", feature_layer=1)])
def test_image_tokens_then_text(kw):
    m = vlm(1, **kw)
    x, t = torch.rand(2, 3, 16, 16), ids(2, 5)
    prefix = m.image_prefix(x)
    assert prefix.shape == (2, m.cfg.n_image_tokens, 32)
    logits, loss = m(x, t, t)
    assert logits.shape == (2, 5, V) and loss.ndim == 0
    torch.testing.assert_close(logits, m.decoder(t, prefix=prefix)[0], **TOL)
    assert not torch.allclose(m(torch.rand(2, 3, 16, 16), t)[0], logits, atol=1e-3)  # the image matters


def test_feature_layer_counts_hidden_states_from_the_embeddings():
    m = vlm(2, drop_cls=False)
    x = torch.rand(2, 3, 16, 16)
    full = m.vision_features(x)
    h = m.vit.tokens(x)
    assert torch.equal(replace_cfg(m, feature_layer=0).vision_features(x), h)
    h1 = m.vit.layers[0](h, None)
    torch.testing.assert_close(replace_cfg(m, feature_layer=1).vision_features(x), h1)
    torch.testing.assert_close(replace_cfg(m, feature_layer=-1).vision_features(x), m.vit.layers[1](h1, None))
    assert torch.equal(full, m.vision_features(x)) and full.shape == (2, 17, 16)
    assert torch.equal(replace_cfg(m, drop_cls=True).vision_features(x), full[:, 1:])


def replace_cfg(m: VLM, **kw) -> VLM:
    m.cfg = replace(m.cfg, **kw)
    return m


def test_caption_loss_predicts_the_next_caption_token_and_skips_pads():
    m = vlm(3)
    x, t = torch.rand(3, 3, 16, 16), ids(3, 9, seed=3)
    t[1, 6:] = 0  # pad_id 0
    logits, _ = m(x, t[:, :-1])
    keep = t[:, 1:] != 0
    want = F.cross_entropy(logits[keep], t[:, 1:][keep])
    torch.testing.assert_close(caption_loss(m, (x, t)), want)
    assert keep.sum() == 3 * 8 - 3  # row 1's three pads are not predicted


def test_frozen_parts_stay_frozen_and_in_eval_mode_through_fit():
    m = vlm(4, decoder=replace(DEC, dropout=0.2)).freeze(vision=True, decoder=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, t = torch.rand(8, 3, 16, 16), ids(8, 6, seed=4)
    fit(m, caption_loss, lambda i: (x, t), TrainConfig(max_steps=3, warmup_steps=0, progress=False, eval_interval=0))
    assert m.training and m.projector.training and not m.decoder.training and not m.vit.training
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"projector.fc1.weight", "projector.fc1.bias", "projector.fc2.weight", "projector.fc2.bias"}
    m.freeze(vision=True, decoder=False).train()
    assert m.decoder.training and not m.vit.training
    caption_loss(m, (x, t)).backward()
    assert m.decoder.embed.weight.grad is not None and m.vit.cls.grad is None


def test_captions_of_a_model_that_learned_two_scenes():
    tok = CaptionTokenizer.build(["左边是 3，右边是 7", "左边是 1，右边是 2"])
    cfg = VLMConfig(vit=replace(VIT, channels=1), decoder=replace(DEC, vocab_size=tok.vocab_size))
    torch.manual_seed(0)
    m = VLM(cfg)
    x = torch.zeros(2, 1, 16, 16)
    x[0, :, :, :8], x[1, :, 8:] = 1, 1  # bright left half, bright bottom half
    text = ["左边是 3，右边是 7", "左边是 1，右边是 2"]
    t = torch.tensor([[tok.bos_id, *tok.encode(s), tok.eos_id] for s in text])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(120):
        opt.zero_grad()
        caption_loss(m, (x, t)).backward()
        opt.step()
    assert caption(m, x, tok) == text and m.training  # train mode restored
    assert caption(m, x, tok, num_beams=3) == text
    assert caption(m, x, tok, batch_size=1) == text


def test_caption_attention_is_layer_0_attention_over_the_patches():
    m = vlm(6, drop_cls=False)  # the [CLS] token is a key, but not a place in the image: spread over the patches
    x, t = torch.rand(3, 16, 16), ids(1, 5, seed=6)
    att = caption_attention(m, x, t[0], layer=0)
    assert att.shape == (5, 16) and (att >= 0).all() and (att.sum(-1) < 1).all()
    # by hand: layer 0's queries and keys of [image tokens, text], causal softmax, mean over the heads
    a = m.decoder.layers[0].attn
    h = m.decoder.layers[0].attn_norm(torch.cat([m.image_prefix(x[None]), m.decoder.embed(t)], 1))  # (1, 17 + 5, C)
    T = h.shape[1]
    q = apply_rope(a.wq(h).view(1, T, 4, 8).transpose(1, 2), m.decoder.cos[:T], m.decoder.sin[:T])
    k = apply_rope(a.wk(h).view(1, T, 2, 8).transpose(1, 2), m.decoder.cos[:T], m.decoder.sin[:T])
    k = k.repeat_interleave(2, dim=1)
    w = (q @ k.transpose(-2, -1) / 8 ** 0.5).masked_fill(~causal_mask(T), float("-inf")).softmax(-1)
    w = w.mean(1)[0, 17:].detach()
    torch.testing.assert_close(att, w[:, 1:17] + w[:, :1] / 16, **TOL)
    both = caption_attention(m, x, t[0])
    assert both.shape == (5, 16) and not torch.allclose(both, att)


# ------------------------------------------------------------------------------ Hugging Face

def _hf(model: VLM, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    from llmpath.vlm.hf import config_to_hf

    torch.manual_seed(seed)
    return transformers.LlavaForConditionalGeneration(config_to_hf(model.cfg)).eval()


def _llava_inputs(model: VLM, text: torch.Tensor) -> torch.Tensor:
    """[image placeholder] * N + text: the placeholder is the last id, never in the text."""
    N = model.cfg.n_image_tokens
    return torch.cat([torch.full((len(text), N), V - 1), text], 1)


@pytest.mark.parametrize("kw", [{}, dict(feature_layer=1, drop_cls=False), dict(feature_layer=0)])
def test_logits_equal_llava_both_ways(kw):
    from llmpath.vlm.hf import from_hf, load_into_hf

    ours = vlm(7, **kw)
    hf = load_into_hf(_hf(ours), ours)
    x, t = torch.rand(2, 3, 16, 16), ids(2, 7, seed=7, high=V - 1)
    N = ours.cfg.n_image_tokens
    # transformers 5.24 asks the tower for hidden states with `output_hidden_states=vision_feature_layer`, so layer 0
    # reads as False and none come back (a TypeError): ask for them outright
    extra = dict(output_hidden_states=True) if ours.cfg.feature_layer == 0 else {}
    with torch.no_grad():
        theirs = hf(input_ids=_llava_inputs(ours, t), pixel_values=x, **extra).logits
        torch.testing.assert_close(ours(x, t)[0], theirs[:, N:], **TOL)
        slow = VLM(replace(ours.cfg, decoder=replace(ours.cfg.decoder, sdpa=False))).eval()
        slow.load_state_dict(ours.state_dict())
        torch.testing.assert_close(slow(x, t)[0], theirs[:, N:], **TOL)
    # Hugging Face -> ours, from a Llava whose every weight is random
    hf2 = perturb(_hf(ours, seed=8), 8)
    back = from_hf(hf2)
    assert back.cfg.feature_layer == ours.cfg.feature_layer and back.cfg.drop_cls == ours.cfg.drop_cls
    with torch.no_grad():
        theirs = hf2(input_ids=_llava_inputs(ours, t), pixel_values=x, **extra).logits
        torch.testing.assert_close(back(x, t)[0], theirs[:, N:], **TOL)


def test_vision_features_are_llavas_selected_vit_hidden_states():
    from llmpath.vlm.hf import load_into_hf

    ours = vlm(9, drop_cls=False)
    hf = load_into_hf(_hf(ours), ours)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = hf.model.vision_tower(x, output_hidden_states=True)
        assert len(out.hidden_states) == 3  # embeddings, layer 1, layer 2: all before the final LayerNorm
        for layer in (0, 1, 2, -1):
            torch.testing.assert_close(replace_cfg(ours, feature_layer=layer).vision_features(x),
                                       out.hidden_states[layer], **TOL)
        torch.testing.assert_close(ours.vit.norm(out.hidden_states[-1]), out.last_hidden_state, **TOL)


def test_loss_and_gradients_equal_llava():
    from llmpath.vlm.hf import load_into_hf, to_hf_state_dict

    ours = vlm(10).train()
    hf = load_into_hf(_hf(ours), ours).train()
    x, t = torch.rand(2, 3, 16, 16), ids(2, 8, seed=10, high=V - 1)
    t[1, 5:] = 0  # padding
    N = ours.cfg.n_image_tokens
    labels = _llava_inputs(ours, t).masked_fill(_llava_inputs(ours, t) == 0, -100)
    labels[:, :N + 1] = -100  # Llava shifts inside: position N - 1 would predict the first text token
    loss = caption_loss(ours, (x, t))
    theirs = hf(input_ids=_llava_inputs(ours, t), pixel_values=x, labels=labels).loss
    torch.testing.assert_close(loss, theirs, **TOL)
    loss.backward()
    theirs.backward()
    grads = VLM(ours.cfg)  # our gradients under Llava's names, through the same mapping as the weights
    with torch.no_grad():
        for g, p in zip(grads.parameters(), ours.parameters()):
            g.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    hf_params = dict(hf.named_parameters())
    names = ["model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_2.bias",
             "model.vision_tower.layers.0.attention.q_proj.weight", "model.vision_tower.embeddings.cls_token",
             "model.language_model.layers.1.self_attn.k_proj.weight", "model.language_model.embed_tokens.weight"]
    for name, g in to_hf_state_dict(grads).items():
        if name in names:
            torch.testing.assert_close(g, hf_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    assert hf_params["model.vision_tower.embeddings.cls_token"].grad.abs().sum() > 0  # [CLS] reaches the patches


def test_llava_config_refuses_what_it_cannot_express():
    pytest.importorskip("transformers")
    from llmpath.vlm.hf import config_to_hf

    with pytest.raises(ValueError, match="Linear-GELU-Linear"):
        config_to_hf(VLMConfig(vit=VIT, decoder=DEC, projector="linear"))
    with pytest.raises(ValueError, match="pixel_values"):
        config_to_hf(VLMConfig(vit=VIT, decoder=DEC, pixel_mean=0.5))


def test_our_vit_is_the_encoder_of_a_vision_encoder_decoder_model():
    transformers = pytest.importorskip("transformers")
    from llmpath.vit.hf import config_to_hf as vit_config
    from llmpath.vit.hf import to_hf_state_dict

    ours = vlm(11).vit
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                   add_cross_attention=True, is_decoder=True)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(vit_config(VIT), gpt2)
    hf = transformers.VisionEncoderDecoderModel(cfg).eval()
    sd = {k.removeprefix("vit."): v for k, v in to_hf_state_dict(ours).items()}
    missing, unexpected = hf.encoder.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing)
    x, t = torch.rand(2, 3, 16, 16), ids(2, 5, seed=11)
    with torch.no_grad():
        out = hf(pixel_values=x, decoder_input_ids=t)
        torch.testing.assert_close(ours.features(x), out.encoder_last_hidden_state, **TOL)
    assert out.logits.shape == (2, 5, V)  # its GPT-2 decoder cross-attends to all 17 ViT outputs


def test_tiles_are_read_one_by_one_and_kept_in_reading_order():
    """tiles=2: a 32-pixel image is four 16-pixel images for the ViT; their tokens follow each other row by row,
    and the attention map comes back as one grid over the whole image."""
    m = vlm(7, tiles=2, drop_cls=False, decoder=replace(DEC, block_size=80))
    x = rand(2, 3, 32, 32, seed=7)
    feats = m.vision_features(x)  # (2, 4 * 17, C)
    assert feats.shape == (2, 4 * 17, VIT.n_embd) and m.cfg.n_image_tokens == 68 and m.cfg.image_size == 32
    for r in range(2):
        for c in range(2):
            tile = x[:, :, 16 * r:16 * r + 16, 16 * c:16 * c + 16]
            torch.testing.assert_close(feats[:, (2 * r + c) * 17:(2 * r + c + 1) * 17].detach(), _hidden(m, tile), **TOL)
    att = caption_attention(m, x[0], ids(1, 4, seed=8)[0])
    assert att.shape == (4, 64)  # an 8 x 8 grid of 4-pixel patches over the whole 32-pixel image


def _hidden(m: VLM, x: torch.Tensor) -> torch.Tensor:
    """The last layer's output of m's ViT before its final LayerNorm (Llava's vision_feature_layer=-1)."""
    h = m.vit.tokens(x)
    for layer in m.vit.layers:
        h = layer(h, None)
    return h.detach()
