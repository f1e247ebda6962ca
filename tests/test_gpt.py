"""Stage 5 GPT: model structure, KV cache, sampling rules, training and exact resume through the CLI,
DDP on 2 CPU processes, finetuning heads, the REPL. None of it needs transformers; the comparisons
with Hugging Face GPT-2 (logits, export, generation) are in test_gpt_hf.py."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmpath.cli import main
from llmpath.config import TrainConfig
from llmpath.data import RandomWindows
from llmpath.gpt.finetune import GPTClassifier, collate, lm_loss
from llmpath.gpt.generate import beam_search, generate, stream
from llmpath.gpt.model import GPT, GPTConfig, KVCache
from llmpath.train import fit, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def tiny(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, n_layer=2, n_head=2, n_embd=16, block_size=24)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def set_sdpa(model: GPT, on: bool) -> None:
    for b in model.h:
        b.attn.sdpa = on


# --------------------------------------------------------------------- model structure

def test_tied_head_and_scaled_init():
    m = GPT(GPTConfig(vocab_size=50, n_layer=8, n_head=4, n_embd=64, block_size=16))
    assert m.lm_head.weight is m.wte.weight
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    std = torch.cat([b.attn.c_proj.weight.flatten() for b in m.h]).std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 0.001  # GPT-2's 1/sqrt(2 n_layer) residual scaling
    assert abs(m.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_handwritten_and_sdpa_attention_agree_with_gradients():
    m = tiny(dropout=0.0)
    x = torch.randint(0, 23, (3, 24))
    out_fast, loss_fast = m(x, x)
    loss_fast.backward()
    g_fast = m.h[0].attn.c_attn.weight.grad.clone()
    m.zero_grad()
    set_sdpa(m, False)
    out_slow, loss_slow = m(x, x)
    loss_slow.backward()
    torch.testing.assert_close(out_slow, out_fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.h[0].attn.c_attn.weight.grad, g_fast, atol=1e-5, rtol=1e-4)


def test_causal_future_tokens_do_not_change_the_past():
    m = tiny()
    x = torch.randint(0, 23, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 23
    torch.testing.assert_close(m(x)[0][:, :8], m(y)[0][:, :8])


def test_longer_than_block_size_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))


# ------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("sdpa", [True, False])
def test_kv_cache_gives_identical_tokens(sdpa):
    m = tiny(seed=3, sdpa=sdpa)
    prompt = torch.randint(0, 23, (2, 5))
    assert torch.equal(generate(m, prompt, 15, greedy=True), generate(m, prompt, 15, greedy=True, use_cache=False))
    kw = dict(temperature=1.2, top_k=10, top_p=0.95, repetition_penalty=1.1)
    with_cache = generate(m, prompt, 15, generator=torch.Generator().manual_seed(5), **kw)
    without = generate(m, prompt, 15, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    # past the context (block 24) the cache gives way to recomputation on the last 24 tokens
    assert torch.equal(generate(m, prompt, 40, greedy=True), generate(m, prompt, 40, greedy=True, use_cache=False))


def test_cached_logits_match_full_forward_in_chunks():
    m = tiny(seed=4)
    x = torch.randint(0, 23, (2, 20))
    full = m(x)[0]
    cache = KVCache(m.cfg, 2)
    parts = [m(x[:, a:b], cache=cache)[0] for a, b in [(0, 7), (7, 8), (8, 15), (15, 20)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 20 and cache.nbytes() == 2 * 2 * (2 * 2 * 24 * 8) * 4


def test_beam_search_with_one_beam_is_greedy_and_cache_free_is_the_same():
    m = tiny(seed=5)
    prompt = torch.randint(0, 23, (1, 4))
    assert torch.equal(beam_search(m, prompt, num_beams=1, max_new_tokens=10), generate(m, prompt, 10, greedy=True))
    assert torch.equal(beam_search(m, prompt, 3, 10), beam_search(m, prompt, 3, 10, use_cache=False))


# ------------------------------------------------------------------------ generation

def test_stop_tokens_and_max_length():
    m = tiny(seed=6)
    prompt = torch.randint(0, 23, (1, 3))
    free = generate(m, prompt, 20, greedy=True)[0, 3:].tolist()
    assert len(free) == 20
    stop = free[4]
    out = generate(m, prompt, 20, greedy=True, stop_tokens=[stop])[0, 3:].tolist()
    assert out == free[: free.index(stop) + 1]
    assert list(stream(m, prompt, 20, greedy=True, stop_tokens=[stop])) == out


def test_stream_scored_gives_streams_tokens_and_the_models_log_probabilities():
    from llmpath.generation import stream_scored

    m = tiny(seed=8)
    prompt = torch.randint(0, 23, (1, 4))
    kw = dict(temperature=0.8, top_p=0.9)
    tokens = list(stream(m, prompt, 12, generator=torch.Generator().manual_seed(1), **kw))
    scored = list(stream_scored(m, prompt, 12, top=3, generator=torch.Generator().manual_seed(1), **kw))
    assert [s.token for s in scored] == tokens
    with torch.no_grad():  # one forward over prompt + tokens: row t-1 predicts token t, before temperature/top-p
        logp = m(torch.cat([prompt, torch.tensor([tokens])], 1))[0][0, 3:-1].log_softmax(-1)
    assert torch.allclose(torch.tensor([s.logprob for s in scored]), logp[range(12), tokens], atol=1e-5)
    top = logp.topk(3)
    assert [[i for i, _ in s.top] for s in scored] == top.indices.tolist()
    assert torch.allclose(torch.tensor([[lp for _, lp in s.top] for s in scored]), top.values, atol=1e-5)


def test_temperature_zero_is_greedy_and_top_k_one_too():
    m = tiny(seed=7)
    prompt = torch.randint(0, 23, (1, 3))
    greedy = generate(m, prompt, 10, greedy=True)
    assert torch.equal(generate(m, prompt, 10, temperature=0), greedy)
    assert torch.equal(generate(m, prompt, 10, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)


def test_long_prompt_is_cropped_with_a_warning():
    m = tiny()
    with pytest.warns(UserWarning, match="longer than the context"):
        out = generate(m, torch.randint(0, 23, (1, 30)), 3, greedy=True)
    assert out.shape == (1, 24 + 3)


# ------------------------------------------------------------------------- finetuning

def test_classifier_ignores_right_padding():
    clf = GPTClassifier(tiny(), n_classes=3).eval()
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    ids, lengths, _ = collate(seqs, np.array([0, 1]), np.array([0, 1]))
    alone = clf(torch.tensor([seqs[0]]), torch.tensor([3]))
    torch.testing.assert_close(clf(ids, lengths)[:1], alone, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ CLI and runs

def _cli(*args):
    return main(["gpt", *args])


def test_bpe_run_exports_a_gpt2_folder_with_its_tokenizer(tmp_path, capsys):
    out = str(tmp_path)
    run = ["--preset=tiny", "--tokenizer=bpe", "--bpe-vocab-size=300", f"--out={out}", "--train.max_steps=5"]
    assert _cli("train", *run) == 0
    assert _cli("export", "--preset=tiny", f"--out={out}") == 0
    folder = tmp_path / "gpt" / "tiny" / "hf"
    assert (folder / "vocab.json").exists() and (folder / "merges.txt").exists()
    capsys.readouterr()
    assert _cli("sample", "ROMEO:", f"--run={folder}", "--greedy", "--max-new-tokens=8") == 0
    from_folder = capsys.readouterr().out
    assert _cli("sample", "ROMEO:", "--preset=tiny", f"--out={out}", "--greedy", "--max-new-tokens=8",
                "--stop=<|endoftext|>") == 0
    assert capsys.readouterr().out == from_folder


def _run_chat(out: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmpath", "gpt", "chat", "--preset=tiny", f"--out={out}",
                           "--max-new-tokens=10"], input=stdin, capture_output=True, text=True, timeout=120)


def test_chat_exits_cleanly_on_empty_stdin_and_quit(tmp_path):
    assert _cli("train", "--preset=tiny", f"--out={tmp_path}", "--train.max_steps=2") == 0
    assert _run_chat(str(tmp_path), "").returncode == 0
    done = _run_chat(str(tmp_path), "ROMEO:\n/quit\n")
    assert done.returncode == 0 and done.stdout.count(">") >= 2


def test_sample_without_a_run_says_what_to_do(tmp_path, capsys):
    assert _cli("sample", f"--out={tmp_path}") == 2
    assert "train one first" in capsys.readouterr().err


def test_resume_is_exact_through_the_cli(tmp_path):
    common = ["--preset=tiny", "--train.max_steps=12", "--train.eval_interval=4"]
    assert _cli("train", *common, f"--out={tmp_path / 'a'}") == 0
    assert _cli("train", *common, f"--out={tmp_path / 'b'}", "--train.stop_at=6") == 0
    assert _cli("train", *common, f"--out={tmp_path / 'b'}", "--train.resume") == 0
    a = load_checkpoint(tmp_path / "a" / "gpt" / "tiny" / "ckpt" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "gpt" / "tiny" / "ckpt" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_CFG = dict(max_steps=4, batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=1, eval_interval=0, progress=False)


def _ddp_fit(out: str) -> None:
    """Fit a tiny GPT; under DDP each rank writes its own final weights."""
    from llmpath.train import dist_info

    ids = np.random.default_rng(0).integers(0, 23, 5000)
    model = tiny(seed=0, dropout=0.0).train()
    fit(model, lm_loss, RandomWindows(ids, 24, 8, seed=0), TrainConfig(**DDP_CFG))
    torch.save(model.state_dict(), Path(out) / f"rank{dist_info()[0]}.pt")


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _ddp_fit(out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    (tmp_path / "single").mkdir()
    _ddp_fit(str(tmp_path / "single"))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    single = torch.load(tmp_path / "single" / "rank0.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks diverged at {k}"
        torch.testing.assert_close(r0[k], single[k], atol=1e-5, rtol=1e-4)
    assert not torch.equal(r0["h.0.mlp.c_fc.weight"], tiny(seed=0).state_dict()["h.0.mlp.c_fc.weight"])


@pytest.mark.slow
def test_torchrun_cli_matches_one_process(tmp_path):
    args = ["gpt", "train", "--preset=tiny", "--device=cpu", "--threads=1", "--train.max_steps=4",
            "--train.batch_size=8", "--train.eval_interval=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={_free_port()}", "-m", "llmpath", *args, f"--out={tmp_path / 'ddp'}"],
                   check=True, env=env, timeout=300, capture_output=True)
    assert main([*args, f"--out={tmp_path / 'one'}"]) == 0
    ddp = load_checkpoint(tmp_path / "ddp" / "gpt" / "tiny" / "ckpt" / "last.pt")
    one = load_checkpoint(tmp_path / "one" / "gpt" / "tiny" / "ckpt" / "last.pt")
    assert ddp["step"] == one["step"] == 4
    for k in one["model"]:
        torch.testing.assert_close(ddp["model"][k], one["model"][k], atol=1e-5, rtol=1e-4)
    summary = json.loads((tmp_path / "ddp" / "gpt" / "tiny" / "results.json").read_text())
    assert summary["world_size"] == 2


# --------------------------------------------------------------------- exercises of docs/tutorials/05_gpt.md

def test_exercise_5_1_the_targets_are_the_inputs_shifted_by_one():
    model = tiny()
    ids = torch.randint(0, 23, (2, 9))
    x, y = ids[:, :-1], ids[:, 1:]  # position t reads x_1..x_t and is scored on x_{t+1}
    logits, loss = model(x, y)
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, 23), y.reshape(-1))
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(lm_loss(model, (x, y)), manual)


def test_exercise_5_2_untying_the_head_adds_a_vocab_by_width_table():
    from torch import nn

    from llmpath.gpt.model import MODEL_PRESETS

    model = GPT(GPTConfig(vocab_size=79, **MODEL_PRESETS["small"]))
    assert model.num_params() == 811_648
    model.lm_head.weight = nn.Parameter(model.wte.weight.detach().clone())  # what deleting the tying line does
    assert model.num_params() == 811_648 + 79 * 128


def test_exercise_5_3_kv_cache_of_gpt2_small_in_bf16():
    from llmpath.gpt.model import MODEL_PRESETS

    cfg = GPTConfig(**MODEL_PRESETS["gpt2"])
    bf16 = KVCache(cfg, batch_size=1, dtype=torch.bfloat16).nbytes()
    assert bf16 == 2 * 12 * 1 * 1024 * 768 * 2 == 36 * 2**20  # 2 (K and V) x layers x batch x T x C x bytes
    assert 32 * bf16 == 1.125 * 2**30  # a batch of 32: 1.125 GiB


def test_exercise_5_4_doubling_the_width_costs_about_four_times_the_flops_per_token():
    from llmpath.gpt.model import MODEL_PRESETS

    small = GPT(GPTConfig(vocab_size=79, **MODEL_PRESETS["small"]))
    wide = GPT(GPTConfig(vocab_size=79, **{**MODEL_PRESETS["small"], "n_embd": 256}))
    ratio = wide.flops_per_token() / small.flops_per_token()
    assert 3.7 < ratio < 3.9  # N grows ~4x (matrices are C x C), attention's 12 L T C only 2x
    assert round(1000 / ratio) == 262  # steps that keep 6ND the same: about a quarter, not half
    assert small.flops_per_token() * 1000 * 16 * 64 == pytest.approx(5.34e12, rel=1e-3)  # section 8's 5.3 TFLOP


def test_exercise_5_5_top_p_keeps_the_smallest_set_that_reaches_p():
    from llmpath.gpt.generate import process_logits

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(process_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.9) == [True, True, True, False]  # 0.5 + 0.3 < 0.9 <= 0.5 + 0.3 + 0.15
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.81) == [True, True, True, False]
    flat = torch.zeros(1, 4)  # a flat distribution keeps more tokens at the same p: the set adapts
    assert torch.isfinite(process_logits(flat, top_p=0.9)).sum() == 4


def test_exercise_5_6_without_the_causal_mask_a_position_sees_its_answer(monkeypatch):
    import llmpath.gpt.model as gpt_model

    x = torch.randint(0, 23, (1, 10))
    later = x.clone()
    later[0, 5] = (later[0, 5] + 1) % 23  # change the character that position 4 must predict
    model = tiny()
    with torch.no_grad():
        torch.testing.assert_close(model(later)[0][:, :5], model(x)[0][:, :5])  # masked: the past cannot tell
        real = gpt_model.scaled_dot_product_attention
        monkeypatch.setattr(gpt_model, "scaled_dot_product_attention",
                            lambda q, k, v, mask=None, causal=False, **kw: real(q, k, v, **kw))  # no mask at all
        assert not torch.allclose(model(later)[0][:, :5], model(x)[0][:, :5])  # position 4 now reads its target
