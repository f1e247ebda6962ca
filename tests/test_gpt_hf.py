"""Stage 5 GPT against Hugging Face transformers: equal logits, loss and gradients, export to and import
from GPT-2 folders (with and without biases), greedy and beam generation, logits processors, and the
CLI's export read by transformers. The tests that need no transformers are in test_gpt.py."""

import json

import numpy as np
import pytest
import torch

from llmpath.cli import main
from llmpath.gpt.generate import beam_search, generate, process_logits
from llmpath.gpt.hf import from_hf, from_pretrained, to_hf
from llmpath.gpt.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
EOS = 96


def hf_model(seed=0, vocab=97, n_positions=48, n_embd=32, n_layer=2, n_head=4):
    """A random GPT2LMHeadModel (no hub); all weights perturbed so that logits are far from uniform."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                                  n_head=n_head, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def tiny(seed=0, **kw) -> GPT:
    """The small random GPT of test_gpt.py (same seed, same shapes)."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, n_layer=2, n_head=2, n_embd=16, block_size=24)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


# ---------------------------------------------------------------------- Hugging Face

@pytest.mark.parametrize("sdpa", [True, False])
def test_logits_equal_huggingface(sdpa):
    hf = hf_model()
    ours = from_hf(hf, sdpa=sdpa)
    x = torch.randint(0, 97, (3, 48))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-5, rtol=1e-5)


def test_loss_and_gradients_equal_huggingface():
    hf = hf_model()
    ours = from_hf(hf)
    x = torch.randint(0, 97, (2, 20))
    loss_hf = hf(x, labels=x).loss  # HF shifts labels inside; ours takes the shifted targets
    _, loss = ours(x[:, :-1], x[:, 1:])
    torch.testing.assert_close(loss, loss_hf, atol=1e-5, rtol=1e-5)
    loss.backward()
    loss_hf.backward()
    # Conv1D stores (in, out): our nn.Linear gradient is its transpose
    torch.testing.assert_close(ours.h[1].mlp.c_fc.weight.grad, hf.transformer.h[1].mlp.c_fc.weight.grad.t(),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.wte.weight.grad, hf.transformer.wte.weight.grad, atol=1e-5, rtol=1e-4)


def test_export_reloads_in_transformers_and_back(tmp_path):
    ours = from_hf(hf_model(seed=1))
    to_hf(ours, tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").exists()
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)
    # a folder written by transformers' own save_pretrained loads through the same path as from_pretrained("gpt2")
    reloaded.save_pretrained(tmp_path / "saved")
    again = from_pretrained(str(tmp_path / "saved"))
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], ours(x)[0], atol=1e-6, rtol=1e-6)


def test_export_of_a_model_without_biases(tmp_path):
    ours = tiny(bias=False)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(to_hf(ours, tmp_path)).eval()
    x = torch.randint(0, 23, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)
    # and back, from our folder, from the transformers object and from transformers' own save_pretrained:
    # bias=False again, not bias=True with zero biases
    reloaded.save_pretrained(tmp_path / "saved")
    for back in (from_hf(tmp_path), from_hf(reloaded), from_hf(tmp_path / "saved")):
        assert back.cfg.bias is False and back.num_params() == ours.num_params()
        assert list(back.state_dict()) == list(ours.state_dict())
        with torch.no_grad():
            assert torch.equal(back(x)[0], ours(x)[0])


def test_biases_trained_after_a_bias_free_export_are_kept(tmp_path):
    """A bias=False export finetuned in transformers has non-zero biases: they load (bias=True), with a warning."""
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(to_hf(tiny(bias=False), tmp_path)).eval()
    with torch.no_grad():
        reloaded.transformer.h[0].mlp.c_fc.bias.add_(0.5)
    x = torch.randint(0, 23, (2, 10))
    with pytest.warns(UserWarning, match="some biases are not zero"):
        back = from_hf(reloaded)
    assert back.cfg.bias is True
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], reloaded(x).logits, atol=1e-5, rtol=1e-5)


def test_greedy_and_beam_generation_equal_huggingface():
    hf = hf_model(seed=2)
    ours = from_hf(hf)
    prompt = torch.randint(0, 96, (1, 6))
    kw = dict(max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=EOS)
    ref = hf.generate(prompt, **kw)
    assert generate(ours, prompt, 30, greedy=True).tolist() == ref.tolist()
    ref_beam = hf.generate(prompt, num_beams=4, **{**kw, "max_new_tokens": 12})
    assert beam_search(ours, prompt, num_beams=4, max_new_tokens=12).tolist() == ref_beam.tolist()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_with_a_stop_token_equals_huggingface(length_penalty):
    hf = hf_model(seed=3)
    ours = from_hf(hf)
    prompt = torch.randint(0, 96, (1, 6))
    stop = generate(ours, prompt, 4, greedy=True)[0, -1].item()  # a token the search will meet early
    ref = hf.generate(prompt, num_beams=4, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=stop,
                      length_penalty=length_penalty)[0].tolist()
    mine = beam_search(ours, prompt, 4, 12, stop_tokens=[stop], length_penalty=length_penalty)[0].tolist()
    assert mine[-1] == stop or len(mine) == 6 + 12
    assert ref[:len(mine)] == mine and all(t == stop for t in ref[len(mine):])  # HF pads a batch with the stop token


def test_logits_processing_equals_huggingface_processors():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(0)
    logits, context = torch.randn(4, 50) * 3, torch.randint(0, 50, (4, 7))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(context, logits.clone())
    ref = TemperatureLogitsWarper(0.7)(context, ref)
    ref = TopKLogitsWarper(20)(context, ref)
    ref = TopPLogitsWarper(0.8)(context, ref)
    ours = process_logits(logits, context, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    torch.testing.assert_close(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


# ------------------------------------------------------------------------ CLI and runs

def _cli(*args):
    return main(["gpt", *args])


def test_train_tiny_then_sample_stream_chat_export(tmp_path, capsys):
    out = str(tmp_path)
    assert _cli("train", "--preset=tiny", f"--out={out}") == 0
    summary = json.loads((tmp_path / "gpt" / "tiny" / "results.json").read_text())
    assert summary["val_loss"] < np.log(summary["vocab_size"])  # better than uniform after 30 steps
    assert (tmp_path / "gpt" / "tiny" / "figures" / "curves.png").exists()
    capsys.readouterr()
    assert _cli("sample", "ROMEO:", "--preset=tiny", f"--out={out}", "--stream", "--max-new-tokens=20") == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert _cli("sample", "KING€", "--preset=tiny", f"--out={out}") == 2  # not in the char vocabulary
    assert "not in this model's character vocabulary" in capsys.readouterr().err
    assert _cli("export", "--preset=tiny", f"--out={out}") == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt" / "tiny" / "hf").eval()
    assert hf.config.n_layer == 2
    capsys.readouterr()  # the exported folder samples the same as the run it came from
    assert _cli("sample", "ROMEO:", f"--run={tmp_path / 'gpt' / 'tiny' / 'hf'}", "--greedy", "--max-new-tokens=8") == 0
    from_folder = capsys.readouterr().out
    assert _cli("sample", "ROMEO:", "--preset=tiny", f"--out={out}", "--greedy", "--max-new-tokens=8") == 0
    assert capsys.readouterr().out == from_folder
