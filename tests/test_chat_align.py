"""Chapter 12 (the chat stage's second half): reward model, DPO, PPO and GRPO on the tiny preset, and their pieces
against references."""

import copy
import math
from dataclasses import replace

import pytest
import torch

from llmpath.chat.base import PRESETS, BaseRun, pretrain_base
from llmpath.chat.dpo import DPO_PRESETS, DPORun, answer_logprobs, dpo_batch, run_dpo
from llmpath.chat.finetune import SFT_PRESETS, SFTRun, run_sft
from llmpath.chat.grpo import GRPO_PRESETS, GRPORun, run_grpo, verify
from llmpath.chat.ppo import PPO_PRESETS, PPORun, ppo_iteration, review_prompts, run_ppo
from llmpath.chat.preferences import pair_tensors
from llmpath.chat.reward import RM_PRESETS, RewardModel, RewardRun, load_reward_model, rm_loss, run_rm
from llmpath.chat.rollout import per_token_kl, sample
from llmpath.config import build_config
from llmpath.runs import load_run
from llmpath.train import make_optimizer

TINY = ["--preset=tiny", "--train.progress=false"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """(out folder, {kind: summary}) of the tiny chain: base, SFT, reward model, DPO, PPO, GRPO."""
    out = tmp_path_factory.mktemp("runs")
    args = [*TINY, f"--out={out}"]
    pretrain_base(build_config(BaseRun, args, PRESETS))
    done = {"sft": run_sft(build_config(SFTRun, args, SFT_PRESETS))}
    for kind, (cls, presets, fn) in {"rm": (RewardRun, RM_PRESETS, run_rm), "dpo": (DPORun, DPO_PRESETS, run_dpo),
                                     "ppo": (PPORun, PPO_PRESETS, run_ppo),
                                     "grpo": (GRPORun, GRPO_PRESETS, run_grpo)}.items():
        done[kind] = fn(build_config(cls, args, presets))
    return out, done


def _cfg(cls, presets, out, *extra):
    return build_config(cls, [*TINY, f"--out={out}", *extra], presets)


def test_reward_model_equals_hugging_face_sequence_classification_with_padding():
    """Our reward = LlamaForSequenceClassification's score (one label, last non-pad token), padded batch."""
    transformers = pytest.importorskip("transformers")
    from llmpath.llama.hf import config_to_hf, to_hf_state_dict
    from llmpath.llama.model import LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    rm = RewardModel(cfg)
    torch.nn.init.normal_(rm.head.weight)  # a trained head, not the zero it starts at
    d = {**config_to_hf(cfg), "num_labels": 1, "pad_token_id": 0, "architectures": ["LlamaForSequenceClassification"]}
    hf = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**d)).eval()
    sd = {k: v for k, v in to_hf_state_dict(rm.body).items() if k != "lm_head.weight"}
    missing, unexpected = hf.load_state_dict({**sd, "score.weight": rm.head.weight.detach()}, strict=False)
    assert not missing and not unexpected
    lengths = torch.tensor([16, 9, 3])
    ids = torch.randint(1, 50, (3, 16))
    ids[torch.arange(16) >= lengths[:, None]] = 0  # right padding with the pad id
    ours = rm.eval()(ids, lengths)
    theirs = hf(input_ids=ids).logits[:, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert ours.std() > 0.1  # the rows really differ


def test_reward_model_starts_at_ln2_and_reads_the_last_real_token(chain):
    out, _ = chain
    sft, tok, _ = load_run(out / "chat" / "tiny-sft", topic="chat")
    pairs = _cfg(RewardRun, RM_PRESETS, out).pairs()["train"][:6]
    batch, kept = pair_tensors(tok, pairs, sft.cfg.block_size)
    rm = RewardModel.from_model(sft)
    assert rm_loss(rm, batch).item() == pytest.approx(math.log(2), abs=1e-7)  # zero head: every reward 0
    torch.nn.init.normal_(rm.head.weight)
    ids, _, lengths = batch
    r = rm(ids.flatten(0, 1), lengths.flatten())
    alone = torch.stack([rm(ids[i, s, :lengths[i, s]][None], lengths[i, s][None])[0]
                         for i in range(len(kept)) for s in (0, 1)])
    torch.testing.assert_close(r, alone, atol=1e-5, rtol=1e-5)  # padding changes no reward


def test_dpo_starts_at_exactly_ln2_and_answer_logprobs_ignore_padding(chain):
    out, _ = chain
    sft, tok, _ = load_run(out / "chat" / "tiny-sft", topic="chat")
    pairs = _cfg(DPORun, DPO_PRESETS, out).pairs()["train"][:4]
    batch, kept = pair_tensors(tok, pairs, sft.cfg.block_size)
    loss, chosen, rejected, _ = dpo_batch(sft, copy.deepcopy(sft), batch, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7) and not chosen.any() and not rejected.any()
    ids, mask, lengths = batch
    torch.set_grad_enabled(False)  # (restored below) plain numbers: nothing here is trained
    lp = answer_logprobs(sft, ids, mask)
    for i in range(len(kept)):
        for s in (0, 1):
            L = int(lengths[i, s])
            logits, _ = sft(ids[i, s, :L - 1][None])
            want = torch.log_softmax(logits[0], -1).gather(1, ids[i, s, 1:L, None])[:, 0]
            assert lp[i, s].item() == pytest.approx(float((want * mask[i, s, 1:L]).sum()), abs=1e-4)
    torch.set_grad_enabled(True)


def test_the_chain_runs_and_load_run_reads_every_model(chain):
    out, done = chain
    rm, tok = load_reward_model(out / "chat" / "tiny-rm")
    assert isinstance(rm, RewardModel) and 0 <= done["rm"]["test"]["accuracy"] <= 1
    for kind in ("dpo", "ppo", "grpo"):  # the policies are plain chat models: `llmpath chat chat --run=` reads them
        model, _, _ = load_run(out / "chat" / f"tiny-{kind}", topic="chat")
        assert type(model).__name__ == "Llama"
    assert done["dpo"]["before"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert done["ppo"]["before"]["kl"] == 0
    assert {"reward", "judge_positive", "kl", "samples"} <= set(done["ppo"]["after"])
    assert set(done["grpo"]["after"]) == {"arithmetic", "idiom-chain", "sentiment-reviews", "sentiment-tweets"}
    with pytest.raises(Exception, match="not a reward model"):
        load_reward_model(out / "chat" / "tiny-sft")


def test_ppo_with_zero_reward_stays_at_the_reference_and_is_pulled_back_to_it(chain):
    """Reward 0 and β > 0: from the reference nothing moves; from elsewhere the KL to the reference shrinks."""
    out, _ = chain
    cfg = _cfg(PPORun, PPO_PRESETS, out, "--end_penalty=0", "--kl_coef=1", "--train.lr=3e-3", "--minibatch=8")
    sft, tok, _ = load_run(out / "chat" / "tiny-sft", topic="chat", dropout=0.0)
    zero = RewardModel.from_model(sft)  # head 0: every answer scores 0
    prompts = review_prompts(cfg, tok, "train")[:8]

    def iterate(policy, n):
        critic = copy.deepcopy(zero).train()
        opt = make_optimizer(torch.nn.ModuleDict({"p": policy, "c": critic}), replace(cfg.train, weight_decay=0.0))
        for _ in range(n):
            ppo_iteration(policy, critic, sft, zero, tok, prompts, opt, cfg.kl_coef, cfg)

    torch.manual_seed(0)
    same = copy.deepcopy(sft).train()
    iterate(same, 2)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), sft.state_dict().values()))

    away = copy.deepcopy(sft)
    with torch.no_grad():
        away.lm_head.weight.add_(0.1 * torch.randn_like(away.lm_head.weight))
    probe = sample(away, tok, prompts, 4, 8, generator=torch.Generator().manual_seed(1))
    before = per_token_kl(away, sft, probe)
    iterate(away.train(), 10)
    after = per_token_kl(away, sft, probe)
    assert after < 0.75 * before, (before, after)  # a penalty of the wrong sign would push it further away


def test_grpo_and_ppo_resume_exactly_where_they_stopped(chain, tmp_path):
    out, _ = chain
    for cls, presets, fn, name in ((GRPORun, GRPO_PRESETS, run_grpo, "g"), (PPORun, PPO_PRESETS, run_ppo, "p")):
        init = [f"--init_from={out / 'chat' / 'tiny-sft'}"] + (
            [f"--reward_run={out / 'chat' / 'tiny-rm'}"] if cls is PPORun else [])
        whole = fn(build_config(cls, [*TINY, f"--out={tmp_path}", f"--name={name}-whole", *init], presets))
        stopped = fn(build_config(cls, [*TINY, f"--out={tmp_path}", f"--name={name}-cut", "--train.stop_at=2", *init],
                                  presets))
        assert stopped == {"steps": 2, "stopped": True}
        resumed = fn(build_config(cls, [*TINY, f"--out={tmp_path}", f"--name={name}-cut", "--train.resume=true",
                                        *init], presets))
        assert resumed["steps"] == whole["steps"] == 3
        a = load_run(tmp_path / "chat" / f"{name}-whole", topic="chat", which="last").model.state_dict()
        b = load_run(tmp_path / "chat" / f"{name}-cut", topic="chat", which="last").model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_grpo_rewards_only_what_checks_out():
    from llmpath.chat.data import build_examples

    ex = build_examples(0, 5, 1, tasks=("arithmetic", "idiom-chain", "sentiment-tweets"))["train"]
    arith = next(e for e in ex if e.task == "arithmetic")
    idiom = next(e for e in ex if e.task == "idiom-chain")
    assert verify("arithmetic", f"答案是{arith.reference}。", arith)
    assert not verify("arithmetic", f"{arith.reference + 1}", arith)
    assert verify("idiom-chain", idiom.reference[0], idiom) and not verify("idiom-chain", "你好", idiom)
    tweet = next(e for e in ex if e.task == "sentiment-tweets")
    other = next(w for w in ("positive", "neutral", "negative") if w != tweet.reference)
    assert verify("sentiment-tweets", tweet.reference, tweet) and not verify("sentiment-tweets", other, tweet)


def _record(item):
    """A job for map_after: appends its name to a log file and returns it (module level: it runs in workers)."""
    name, log = item
    with open(log, "a") as f:
        f.write(name + "\n")
    return name.upper()


def test_map_after_starts_each_item_only_after_the_ones_it_waits_for(tmp_path):
    from llmpath.common import map_after

    log = tmp_path / "order.txt"
    items = {n: (n, str(log)) for n in ("ppo", "rm", "dpo", "col")}
    after = {"ppo": ("rm",), "col": ("ppo", "dpo")}
    assert map_after(_record, items, after) == {"rm": "RM", "dpo": "DPO", "ppo": "PPO", "col": "COL"}
    order = log.read_text().split()
    assert order.index("rm") < order.index("ppo") < order.index("col") and order.index("dpo") < order.index("col")
    with pytest.raises(ValueError, match="wait on each other"):
        map_after(_record, items, {"rm": ("ppo",), "ppo": ("rm",)})
    with pytest.raises(ValueError, match="not an item"):
        map_after(_record, items, {"rm": ("sft",)})


def test_grpo_reads_the_sft_runs_own_scores_only_where_they_are_the_same_numbers(chain):
    from llmpath.chat.finetune import eval_examples, test_items
    from llmpath.chat.grpo import sft_scores, task_scores

    out, _ = chain
    cfg = _cfg(GRPORun, GRPO_PRESETS, out)
    model, tok, _ = load_run(out / "chat" / "tiny-sft", topic="chat")
    items = test_items(cfg, tok, model.cfg.block_size, eval_examples(cfg))
    assert sft_scores(cfg) == task_scores(model, tok, items, cfg)["scores"]
    assert sft_scores(_cfg(GRPORun, GRPO_PRESETS, out, "--eval_items=3")) is None  # asked otherwise: computed anew
