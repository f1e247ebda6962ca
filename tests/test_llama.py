"""Stage 9 through its experiments and CLI: the variants are one change each at equal parameters, the MoE at
equal active parameters; tiny training that load_run rebuilds; the comparison, ablation, figures, sampling,
export and KV-memory table; one-line errors. Model ideas: test_llama_model.py; Hugging Face: test_llama_hf.py."""

import json
from dataclasses import replace

import pytest
import torch

from llmpath.cli import main
from llmpath.config import build_config
from llmpath.llama import cli
from llmpath.gpt.model import GPT
from llmpath.llama.experiments import (GPT2_BLOCK, VARIANTS, LlamaRun, llama_from_gpt, matched_ff, model_for,
                                        variant_run)
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.runs import load_run
from helpers import one_line_error


def llama(*args) -> int:
    return main(["llama", *args])


def small() -> LlamaRun:
    return build_config(LlamaRun, ["--preset=small"], cli.PRESETS)


def _params(cfg: LlamaConfig, active: bool = True) -> int:
    return Llama(replace(cfg, vocab_size=65)).num_params(active=active)


# ------------------------------------------------------------------------- the variants

def test_each_variant_changes_one_thing_and_keeps_the_parameter_count():
    base = small()
    target = _params(model_for(base.model, GPT2_BLOCK))
    fields = ("norm", "pos", "mlp", "bias", "n_kv_head")
    gpt2 = model_for(base.model, GPT2_BLOCK)
    for name, _, over in VARIANTS:
        cfg = variant_run(base, name).model
        changed = {f for f in fields if getattr(cfg, f) != getattr(gpt2, f)}
        expected = {"gpt2": set(), "rmsnorm": {"norm"}, "rope": {"pos"}, "swiglu": {"mlp"}, "gqa": {"n_kv_head"},
                    "llama": set(fields)}[name]
        assert changed == expected, name
        n = _params(cfg)
        if name == "rope":  # rotations are computed, not learned: the position table's parameters are gone
            assert n == target - cfg.block_size * cfg.n_embd
        elif name == "gqa":  # GPT-2's MLP has no width to give back what the shared key/value heads save
            assert n == target - cfg.n_layer * 2 * (cfg.n_embd * cfg.n_embd // 2 + cfg.n_embd // 2)
        else:  # within the parameters of one hidden unit (3 n_embd per block) of GPT-2's block
            assert abs(n - target) <= 3 * cfg.n_embd * cfg.n_layer, (name, n, target)
    assert variant_run(base, "llama").model.n_kv_head == 2 and variant_run(base, "gpt2").model.n_kv_head == 0


def test_moe_has_the_dense_models_active_parameters_and_more_in_total():
    base = small()
    dense, moe = variant_run(base, "llama").model, variant_run(base, "moe").model
    assert moe.n_expert == 4 and moe.top_k == 2 and moe.n_ff == pytest.approx(dense.n_ff / 2, abs=1)
    assert abs(_params(moe) - _params(dense)) <= 3 * moe.n_embd * moe.n_layer * moe.top_k + moe.n_expert * moe.n_embd * moe.n_layer
    assert _params(moe, active=False) > 1.5 * _params(dense)


def test_matched_ff_solves_for_the_width():
    cfg = LlamaConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
    for ff in (100, 171, 300):
        assert matched_ff(cfg, _params(replace(cfg, n_ff=ff))) == ff


# --------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny comparison (three short runs), shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    assert llama("compare", "--preset=tiny", f"--out={out}") == 0
    return out


def test_compare_trains_three_runs_that_load_run_rebuilds(runs):
    res = json.loads((runs / "llama" / "tiny-compare" / "results.json").read_text())
    assert set(res) == {"gpt", "llama", "moe"}
    folders = {"gpt": runs / "gpt" / "tiny", "llama": runs / "llama" / "tiny-llama", "moe": runs / "llama" / "tiny-moe"}
    for name, folder in folders.items():
        model, tok, cfg = load_run(folder)
        assert res[name]["steps"] == 30 and res[name]["val_loss"] < 4.29  # ln 73: better than uniform
        assert sum(p.numel() for p in model.parameters()) == res[name]["total_params"]
    assert isinstance(load_run(folders["gpt"])[0], GPT)  # stage 5's own run, in stage 5's folder
    model, _, cfg = load_run(folders["moe"])
    assert isinstance(model, Llama) and cfg.model.n_expert == 4 and len(res["moe"]["usage"]) == cfg.model.n_layer
    assert model.num_params(active=True) == res["moe"]["active_params"] < res["moe"]["total_params"]
    assert all(abs(sum(row) - 1) < 1e-6 for row in res["moe"]["usage"])
    assert res["gpt"]["usage"] is None and "最忙专家的份额" in cli.compare_table(res)
    gpt, _, _ = load_run(folders["gpt"])  # the figures read it as our Llama in GPT-2 mode: the same function
    x = torch.randint(0, gpt.cfg.vocab_size, (2, 12))
    torch.testing.assert_close(llama_from_gpt(gpt)(x)[0], gpt(x)[0], atol=1e-5, rtol=1e-5)


def test_a_finished_run_is_reused(runs):
    best = runs / "llama" / "tiny-llama" / "ckpt" / "best.pt"
    before = best.stat().st_mtime_ns
    assert llama("compare", "--preset=tiny", f"--out={runs}") == 0
    assert best.stat().st_mtime_ns == before


def test_sample_figures_export_and_kv_memory(runs, tmp_path, capsys):
    assert llama("sample", "ROMEO:", "--preset=tiny", "--name=tiny-llama", "--max_new_tokens=20", f"--out={runs}") == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert llama("figures", "--preset=tiny", f"--out={runs}") == 0
    fig_dir = runs / "llama" / "tiny-compare" / "figures"
    for name in ("rope", "kv_cache", "attention_rope_vs_learned", "expert_usage"):
        assert (fig_dir / f"{name}.png").stat().st_size > 3_000, name
    assert llama("kv-memory") == 0
    out = capsys.readouterr().out
    assert "Llama-3-8B" in out and "128" in out
    transformers = pytest.importorskip("transformers")
    assert llama("export", "--preset=tiny", "--name=tiny-moe", f"--out={runs}", f"--dir={tmp_path / 'hf'}") == 0
    model, _, _ = load_run(runs / "llama" / "tiny-moe")
    hf = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, model.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-5, rtol=1e-5)


def test_ablation_table_over_two_seeds(tmp_path):
    res = cli.ablation(build_config(cli.AblationRun, ["--preset=tiny", f"--out={tmp_path}", "--seeds=0,1",
                                                      "--train.max_steps=3"], cli.PRESETS))
    assert list(res) == [name for name, _, _ in VARIANTS]
    assert all(len(r["val_losses"]) == 2 and r["val_losses"][0] != r["val_losses"][1] for r in res.values())
    table = cli.ablation_table(res)
    assert "均值 ± 半极差" in table and "+ RoPE" in table and table.count("\n") == len(VARIANTS) + 1


def test_bad_inputs_are_one_line_before_any_work(tmp_path, capsys):
    assert llama("train", "--preset=tiny", "--model.n_kv_head=3", f"--out={tmp_path}") == 2
    assert "n_head=2 must be a multiple of n_kv_head=3" in one_line_error(capsys)
    assert llama("train", "--preset=tiny", "--model.n_expert=2", "--model.top_k=3", f"--out={tmp_path}") == 2
    assert "top_k=3 is more than n_expert=2" in one_line_error(capsys)
    assert llama("compare", "--preset=tiny", "--model.n_embd=30", f"--out={tmp_path}") == 2
    assert "RoPE rotates pairs" in one_line_error(capsys)
    assert llama("ablation", "--preset=tiny", "--seeds=a", f"--out={tmp_path}") == 2
    assert "--seeds expects non-negative integers" in one_line_error(capsys)
    assert llama("sample", "--preset=tiny", f"--out={tmp_path}") == 2
    assert "llmpath llama train --preset=tiny" in one_line_error(capsys)
    assert not (tmp_path / "llama").exists()


def test_doctor_smoke():
    assert "ok" in cli.smoke()
