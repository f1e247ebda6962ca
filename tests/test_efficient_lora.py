"""LoRA (llmpath.efficient.lora): an unchanged model at the start, merge/unmerge, gradients only in the
adapters (also through the shared fit), adapter files, equality with peft, and a tiny end-to-end run."""

import copy

import pytest
import torch
from helpers import perturb
from safetensors.torch import load_file, save_file

from llmpath.config import TrainConfig, build_config
from llmpath.efficient.lora import (LoRALinear, apply_lora, load_lora, lora_state_dict, merge_lora, trainable_params,
                                    unmerge_lora)
from llmpath.efficient.lora_runs import PRESETS, LoRACompare, lora_compare, lora_table
from llmpath.gpt.finetune import lm_loss
from llmpath.gpt.model import GPT, GPTConfig
from llmpath.gpt.pretrain import PRESETS as GPT_PRESETS
from llmpath.gpt.pretrain import GPTRun, pretrain
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.train import fit

GPT_ALL = ("c_attn", "c_proj", "c_fc")  # every linear layer of a GPT block (the head is tied: left out)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return perturb(GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8)), seed).eval()


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed: int = 1):
    """Non-zero B (and new A): the update B A is then not zero, so tests see it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in lora_state_dict(model).items():
            v.copy_(0.3 * torch.randn(v.shape, generator=g))
    return model


def test_output_unchanged_at_init_and_only_targets_wrapped():
    base = tiny_gpt()
    x = ids()
    want = base(x)[0]
    model = apply_lora(copy.deepcopy(base), r=4, alpha=8)
    torch.testing.assert_close(model(x)[0], want, atol=1e-6, rtol=0)  # B = 0: exactly the pretrained model
    noisy = randomize_adapters(apply_lora(copy.deepcopy(base), r=4, dropout=0.5))
    torch.testing.assert_close(noisy(x)[0], noisy(x)[0], atol=0, rtol=0)  # the model was in eval(): so are its adapters
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped == [f"h.{i}.attn.{p}" for i in range(2) for p in ("c_attn", "c_proj")]  # not the MLP's c_proj
    layer = model.h[0].attn.c_attn
    assert layer.lora_A.abs().sum() > 0 and layer.lora_B.abs().sum() == 0
    # r (in + out) per layer: c_attn 16 -> 48, c_proj 16 -> 16, two blocks
    assert trainable_params(model) == (2 * 4 * ((16 + 48) + (16 + 16)), sum(p.numel() for p in model.parameters()))
    # the base's state-dict keys are kept: a plain GPT loads the model's weights without the adapters
    plain = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    GPT(base.cfg).load_state_dict(plain)


def test_llama_default_targets_are_its_attention_projections():
    torch.manual_seed(0)
    model = apply_lora(Llama(LlamaConfig(vocab_size=11, n_layer=2, n_head=2, n_kv_head=1, n_embd=16, block_size=8)), r=2)
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted(f"layers.{i}.attn.{p}" for i in range(2) for p in ("wq", "wk", "wv", "wo"))
    # wk and wv are 16 -> 8 (one key/value head of size 8)
    assert trainable_params(model)[0] == 2 * 2 * (2 * (16 + 16) + 2 * (16 + 8))


def test_merge_equals_unmerged_and_unmerge_restores_the_weights():
    model = randomize_adapters(apply_lora(tiny_gpt(), r=4, alpha=8, targets=GPT_ALL))
    x = ids()
    base_weights = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    unmerged = model(x)[0]
    merge_lora(model)
    assert all(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    assert not torch.equal(model.h[0].attn.c_attn.weight, base_weights["h.0.attn.c_attn.weight"])
    torch.testing.assert_close(model(x)[0], unmerged, atol=1e-5, rtol=0)
    merge_lora(model)  # a second merge adds nothing
    torch.testing.assert_close(model(x)[0], unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    for k, v in model.state_dict().items():
        if "lora_" not in k:
            torch.testing.assert_close(v, base_weights[k], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x)[0], unmerged, atol=1e-5, rtol=0)


def test_merged_model_refuses_to_train():
    model = merge_lora(randomize_adapters(apply_lora(tiny_gpt(), r=2))).train()
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        model(ids())


def test_only_adapters_get_gradients():
    model = randomize_adapters(apply_lora(tiny_gpt(), r=4, targets=GPT_ALL)).train()
    x = ids()
    model(x, x)[1].backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_shared_fit_trains_the_adapters_and_leaves_the_base_alone():
    model = apply_lora(tiny_gpt(), r=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(max_steps=3, batch_size=4, lr=1e-2, warmup_steps=0, weight_decay=0.1, progress=False)
    fit(model, lm_loss, lambda i: (data[:, :-1], data[:, 1:]), cfg)
    for k, v in model.state_dict().items():
        changed = not torch.equal(v, before[k])
        assert changed == ("lora_" in k), k  # weight decay too touches only what the optimizer holds


def test_adapters_round_trip_through_a_file_into_a_fresh_model(tmp_path):
    trained = randomize_adapters(apply_lora(tiny_gpt(), r=4, targets=GPT_ALL))
    state = lora_state_dict(trained)
    assert state and all(k.endswith((".lora_A", ".lora_B")) for k in state)  # adapters only
    save_file(state, tmp_path / "adapter.safetensors")
    torch.manual_seed(123)  # another random A: loading must replace it
    fresh = apply_lora(tiny_gpt(), r=4, targets=GPT_ALL)
    x = ids()
    assert not torch.allclose(fresh(x)[0], trained(x)[0], atol=1e-3)
    load_lora(fresh, load_file(tmp_path / "adapter.safetensors"))
    torch.testing.assert_close(fresh(x)[0], trained(x)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="rank it was trained with \\(r=4\\)"):
        load_lora(apply_lora(tiny_gpt(), r=2, targets=GPT_ALL), state)
    with pytest.raises(ValueError, match="targets"):
        load_lora(apply_lora(tiny_gpt(), r=4), state)  # attention only: the MLP adapters have nowhere to go


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="at least 1"):
        apply_lora(tiny_gpt(), r=0)
    with pytest.raises(ValueError, match="attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, lm_head"):
        apply_lora(tiny_gpt(), targets=("wq", "wv"))  # Llama's names on a GPT: the message lists GPT's
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny_gpt(), targets=("lm_head",))
    with pytest.raises(ValueError, match="already"):
        apply_lora(apply_lora(tiny_gpt()))
    with pytest.raises(ValueError, match="apply_lora"):
        merge_lora(tiny_gpt())


def test_same_outputs_and_gradients_as_peft():
    peft = pytest.importorskip("peft", reason="peft is the reference LoRA implementation (pip install peft)")
    base = tiny_gpt()
    ours = apply_lora(copy.deepcopy(base), r=4, alpha=8, targets=GPT_ALL)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(GPT_ALL), fan_in_fan_out=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    # peft stores GPT-2's Conv1D weights transposed (in, out) and switches fan_in_fan_out on when it meets one;
    # our GPT's layers are plain nn.Linear (out, in), so W x is F.linear and the flag must stay off
    assert config.fan_in_fan_out is False
    randomize_adapters(ours)
    theirs_modules = dict(theirs.base_model.model.named_modules())
    names = [n for n, m in ours.named_modules() if isinstance(m, LoRALinear)]
    assert len(names) == 2 * 4  # both blocks: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    with torch.no_grad():
        for n in names:
            m = theirs_modules[n]
            m.lora_A["default"].weight.copy_(ours.get_submodule(n).lora_A)
            m.lora_B["default"].weight.copy_(ours.get_submodule(n).lora_B)
    assert trainable_params(ours)[0] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    x = ids()
    out_ours, out_theirs = ours(x)[0], theirs(x)[0]
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=0)
    w = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(5))
    (out_ours * w).sum().backward()
    (out_theirs * w).sum().backward()
    for n in names:
        mine, m = ours.get_submodule(n), theirs_modules[n]
        torch.testing.assert_close(mine.lora_A.grad, m.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mine.lora_B.grad, m.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)


def test_compare_end_to_end_on_tiny(tmp_path):
    out = str(tmp_path)
    pretrain(build_config(GPTRun, ["--preset=tiny", f"--out={out}", "--train.max_steps=3"], GPT_PRESETS), "gpt", GPT)
    args = ["--preset=tiny", f"--out={out}", "--ft_steps=3", "--ranks=2", "--eval_tokens=256", "--sample_tokens=5"]
    cfg = build_config(LoRACompare, args, PRESETS)
    done = lora_compare(cfg)
    assert list(done) == ["gpt-full", "gpt-r2"]  # no Llama run in this out folder: GPT rows only
    full, lora = done["gpt-full"], done["gpt-r2"]
    assert full["before"]["val_loss"] == pytest.approx(lora["before"]["val_loss"], abs=1e-6)  # B = 0 at the start
    assert full["trainable_params"] == full["total_params"] and full["lr"] == 1e-3
    assert 0 < lora["trainable_share"] < 0.1 and lora["lr"] == 1e-2
    assert lora["file_bytes"] < full["file_bytes"] / 5
    assert {"before", "val_loss", "seconds"} <= set(lora)
    assert "LoRA r=2" in lora_table(done)
    # the adapter file holds the trained adapters, and the frozen weights in the checkpoint are the pretrained ones
    row = tmp_path / "efficient" / "tiny-lora-gpt-r2"
    trained = torch.load(row / "ckpt" / "last.pt", weights_only=False)["model"]
    pre = torch.load(tmp_path / "gpt" / "tiny" / "ckpt" / "best.pt", weights_only=False)["model"]
    for k, v in pre.items():
        assert torch.equal(trained[k], v), k
    adapter = load_file(row / "adapter.safetensors")
    assert set(adapter) == {k for k in trained if "lora_" in k}
    for k, v in adapter.items():
        assert torch.equal(v, trained[k]), k
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if k.endswith("lora_B"))  # B moved away from zero
    # finished rows are reused, not trained again
    stamp = (row / "ckpt" / "last.pt").stat().st_mtime_ns
    again = lora_compare(cfg)
    assert again["gpt-r2"]["val_loss"] == lora["val_loss"]
    assert (row / "ckpt" / "last.pt").stat().st_mtime_ns == stamp
