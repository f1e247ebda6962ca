"""Stage 6 BERT through the CLI: tiny pretraining, [MASK] fills, finetuning pretrained vs scratch, the export that
transformers reads, figures, the doctor's smoke check, one-line errors. The model's equivalence with Hugging Face is
in test_bert_model.py, the data pipeline in test_bert_data.py, WordPiece in test_wordpiece.py."""

import csv
import json

import numpy as np
import pytest
import torch

from llmpath.bert import cli
from llmpath.bert.finetune import encode_texts
from llmpath.bert.pretrain import encode_with_masks, fill_masks, split_documents
from llmpath.cli import main
from llmpath.common import paired_bootstrap
from llmpath.config import ConfigError
from llmpath.data import load_classification
from llmpath.runs import load_run
from llmpath.tokenizers import WordPiece


def bert(*args) -> int:
    return main(["bert", *args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny pretraining run shared by the tests below (runs/bert/tiny)."""
    out = tmp_path_factory.mktemp("runs")
    assert bert("train", "--preset=tiny", f"--out={out}") == 0
    return out


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    """120 tweets with their labels as a .csv: a classification task small enough for a test."""
    data = load_classification("tweets")
    path = tmp_path_factory.mktemp("task") / "few_tweets.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in np.random.default_rng(0).permutation(len(data))[:120]:
            w.writerow([data.texts[i], data.label_names[data.labels[i]]])
    return path


def test_pretraining_writes_a_run_that_load_run_rebuilds(runs):
    res = json.loads((runs / "bert" / "tiny" / "results.json").read_text())
    model, tok, cfg = load_run(runs / "bert" / "tiny")
    assert isinstance(tok, WordPiece) and cfg.model.vocab_size == tok.vocab_size == res["vocab_size"] <= 600
    assert cfg.model.pad_id == tok.pad_id
    assert np.isfinite(res["mlm_loss"]) and 0 <= res["mlm_acc"] <= 1 and 0 <= res["nsp_acc"] <= 1
    # the unigram baseline is the cross-entropy of a frequency table: between 0 and log(V)
    assert 0 < res["unigram_loss"] < np.log(tok.vocab_size)
    assert res["steps"] == 20 and res["tokens_per_s"] > 0
    assert (runs / "bert" / "tiny" / "figures" / "curves.png").exists()


def test_a_finished_run_is_reused_not_retrained(runs, capsys):
    before = (runs / "bert" / "tiny" / "ckpt" / "best.pt").stat().st_mtime_ns
    assert bert("train", "--preset=tiny", f"--out={runs}") == 0
    assert (runs / "bert" / "tiny" / "ckpt" / "best.pt").stat().st_mtime_ns == before


def test_fill_prints_the_top_k_with_probabilities(runs, capsys):
    assert bert("fill", "the [MASK] of the [MASK]", "--preset=tiny", f"--out={runs}", "--top-k=3") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["[MASK] 1", "[MASK] 2"]
    model, tok, _ = load_run(runs / "bert" / "tiny")
    for cands in fill_masks(model, tok, "the [MASK] of the [MASK]", k=4):
        probs = [p for _, p in cands]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert not {t for t, _ in cands} & {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}  # words only


def test_fill_reads_the_whole_sentence(runs):
    """Bidirectional: the probabilities at a [MASK] change when only words to its right change."""
    model, tok, _ = load_run(runs / "bert" / "tiny")
    a = fill_masks(model, tok, "the [MASK] of the city", k=5)[0]
    b = fill_masks(model, tok, "the [MASK] of the war", k=5)[0]
    assert a != b


def test_fill_without_a_mask_is_one_line(runs, capsys):
    assert bert("fill", "no mask here", "--preset=tiny", f"--out={runs}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[MASK]" in err and "Traceback" not in err


def test_encode_with_masks_keeps_each_mask_one_token(runs):
    _, tok, _ = load_run(runs / "bert" / "tiny")
    ids = encode_with_masks(tok, "a[MASK]b [MASK]")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and ids.count(tok.mask_id) == 2
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        encode_with_masks(tok, "nothing to fill")


def test_classify_pretrained_vs_scratch_on_a_file(runs, task_file, capsys):
    assert bert("classify", f"--task={task_file}", "--preset=tiny", f"--out={runs}") == 0
    out = capsys.readouterr().out
    assert "BERT，预训练后微调" in out and "同一 BERT，从随机权重训练" in out and "配对自助法" in out
    for init in ("pretrained", "scratch"):
        folder = runs / "bert" / f"tiny-few_tweets-{init}"
        res = json.loads((folder / "results.json").read_text())
        pred = np.load(folder / "predictions.npy")
        assert len(pred) == 12 and 0 <= res["test_acc"] <= 1  # 10% of 120 texts
    states = np.load(runs / "bert" / "tiny-few_tweets-pretrained" / "cls_states.npz")
    assert states["before"].shape == states["after"].shape == (12, 32)
    assert not np.allclose(states["before"], states["after"])  # finetuning moved [CLS]
    assert list(states["label_names"]) == ["negative", "neutral", "positive"]


def test_classify_without_a_pretrained_run_says_what_to_do(tmp_path, task_file, capsys):
    assert bert("classify", f"--task={task_file}", "--preset=tiny", f"--out={tmp_path}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llmpath bert train --preset=tiny" in err


def test_export_is_read_by_transformers(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    assert bert("export", "--preset=tiny", f"--out={runs}", f"--dir={tmp_path / 'hf'}") == 0
    model, tok, _ = load_run(runs / "bert" / "tiny")
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.BertTokenizer.from_pretrained(tmp_path / "hf")
    text = "To be, or not to be: 今天的菜很好吃"
    ids = hf_tok(text)["input_ids"]
    assert ids == [tok.cls_id, *tok.encode(text), tok.sep_id]
    x = torch.tensor([ids])
    with torch.no_grad():
        ours = model(x)
        theirs = hf(x)
    torch.testing.assert_close(ours[0], theirs.prediction_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], theirs.seq_relationship_logits, atol=1e-5, rtol=1e-5)


def test_figures_draw_attention_heads(runs):
    assert bert("figures", "--preset=tiny", f"--out={runs}", "--text=今天的菜很好吃") == 0
    png = runs / "bert" / "tiny" / "figures" / "attention.png"
    assert png.stat().st_size > 5_000


def test_unknown_source_is_one_line_before_any_work(tmp_path, capsys):
    assert bert("train", "--preset=tiny", "--sources=wiki,nope", f"--out={tmp_path}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "wiki" in err
    assert not (tmp_path / "bert").exists()


def test_doctor_smoke():
    assert "ok" in cli.smoke()


def test_split_documents_holds_out_at_least_one_and_is_seeded():
    docs = [[str(i)] for i in range(10)]
    tr, he = split_documents(docs, 0.03, seed=1)
    assert len(he) == 1 and len(tr) == 9 and sorted(tr + he) == sorted(docs)
    assert split_documents(docs, 0.03, seed=1) == (tr, he)
    with pytest.raises(ConfigError):
        split_documents(docs[:1], 0.5, seed=0)


def test_encode_texts_cuts_to_the_models_length():
    tok = WordPiece.train(["hello world"] * 5, vocab_size=40)
    seqs = encode_texts(tok, ["hello world " * 50], max_len=16)
    assert len(seqs[0]) == 16 and seqs[0][0] == tok.cls_id and seqs[0][-1] == tok.sep_id


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = rng.random(2000) < 0.8
    same = paired_bootstrap(a, a)
    assert same["diff"] == same["lo"] == same["hi"] == 0
    b = a.copy()
    b[:200] = False  # b is wrong on 200 examples where a may be right: a is better
    g = paired_bootstrap(a, b)
    assert g["diff"] == pytest.approx((a.sum() - b.sum()) / 2000) and 0 < g["lo"] <= g["diff"] <= g["hi"]


@pytest.mark.slow
def test_torchrun_pretraining_matches_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m llmpath bert train`: DDP splits each batch, the weights end as one process's."""
    import os
    import socket
    import subprocess
    import sys

    from llmpath.train import load_checkpoint

    args = ["bert", "train", "--preset=tiny", "--device=cpu", "--threads=1", "--train.max_steps=4", "--model.dropout=0"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={port}", "-m", "llmpath", *args, f"--out={tmp_path / 'ddp'}"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, capture_output=True)
    assert main([*args, f"--out={tmp_path / 'one'}"]) == 0
    ddp = load_checkpoint(tmp_path / "ddp" / "bert" / "tiny" / "ckpt" / "last.pt")
    one = load_checkpoint(tmp_path / "one" / "bert" / "tiny" / "ckpt" / "last.pt")
    assert ddp["step"] == one["step"] == 4
    for k in one["model"]:
        torch.testing.assert_close(ddp["model"][k], one["model"][k], atol=1e-5, rtol=1e-4)
    assert json.loads((tmp_path / "ddp" / "bert" / "tiny" / "results.json").read_text())["world_size"] == 2


# --------------------------------------------------------------------- exercises of docs/tutorials/06_bert.md

def _word_vocab(n_words: int = 995) -> WordPiece:
    """The five specials (ids 0-4) and n_words ordinary tokens w0, w1, ...: enough for mask_tokens."""
    from llmpath.tokenizers.wordpiece import SPECIALS

    return WordPiece([*SPECIALS, *(f"w{i}" for i in range(n_words))])


def test_exercise_6_1_the_shares_of_80_10_10():
    from llmpath.bert.data import mask_tokens

    tok = _word_vocab()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, tok.vocab_size, (512, 102), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_id, tok.sep_id  # 100 ordinary tokens a row: 15 chosen in each
    masked, labels = mask_tokens(ids, g, tok)
    ordinary = ids >= 5
    chosen = labels != -100
    assert (chosen.sum(1) == 15).all() and not (chosen & ~ordinary).any()
    n = ordinary.sum().item()
    as_mask = (chosen & (masked == tok.mask_id)).sum().item() / n
    replaced = (chosen & (masked != tok.mask_id) & (masked != ids)).sum().item() / n
    kept = (chosen & (masked == ids)).sum().item() / n
    # of every 100 ordinary tokens: 12 shown as [MASK], 1.5 replaced by a random token, 1.5 left as they were
    assert abs(as_mask - 0.12) < 0.003 and abs(replaced - 0.015) < 0.002 and abs(kept - 0.015) < 0.002
    # a token the model sees as an ordinary word (not [MASK]) is a random replacement about 1.7% of the time
    looks_ordinary = ordinary & (masked != tok.mask_id)
    assert abs((looks_ordinary & (masked != ids)).sum().item() / looks_ordinary.sum().item() - 0.015 / 0.88) < 0.002


def test_exercise_6_2_logits_at_the_masked_positions_only():
    from llmpath.bert.data import mask_tokens
    from llmpath.bert.model import IGNORE, BERTConfig, BERTPretraining

    tok = _word_vocab(95)
    torch.manual_seed(0)
    cfg = BERTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, n_ff=64, max_len=64, dropout=0.0)
    model = BERTPretraining(cfg).eval()
    ids = torch.randint(5, tok.vocab_size, (4, 42))
    ids[:, 0], ids[:, -1] = tok.cls_id, tok.sep_id  # 40 ordinary tokens a row: 6 chosen in each
    x, labels = mask_tokens(ids, 0, tok)
    with torch.no_grad():
        full, _ = model(x)  # (4, 42, V): every position
        picked, _ = model(x, mlm_labels=labels)  # (24, V): the masked positions only
    at = labels != IGNORE
    torch.testing.assert_close(picked, full[at], atol=1e-6, rtol=1e-6)
    # multiply-adds of the decoder (n_embd x V): N rows instead of B x T
    ratio = picked.shape[0] * cfg.n_embd * cfg.vocab_size / (ids.numel() * cfg.n_embd * cfg.vocab_size)
    assert picked.shape[0] == 24 and ratio == pytest.approx(6 / 42)


def test_exercise_6_3_a_word_to_the_right_moves_bert_not_gpt():
    from llmpath.bert.model import BERTConfig, BERTPretraining
    from llmpath.gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    bert_model = BERTPretraining(BERTConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=16, n_ff=32, max_len=16,
                                            dropout=0.0)).eval()
    gpt = GPT(GPTConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=16, block_size=16)).eval()
    with torch.no_grad():  # larger random weights than the N(0, 0.02) init, so every effect is clearly visible
        for p in [*bert_model.parameters(), *gpt.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    a = torch.tensor([[2, 7, 4, 9, 11, 12, 3]])  # [CLS] w [MASK] w w w [SEP]: the [MASK] at position 2
    b = a.clone()
    b[0, 4] = 20  # change one word to the right of the [MASK]
    with torch.no_grad():
        moved = (bert_model(a)[0][0, 2] - bert_model(b)[0][0, 2]).abs().max()
        gpt_a, gpt_b = gpt(a)[0], gpt(b)[0]
    assert moved > 1e-3  # BERT's guess at position 2 read position 4
    torch.testing.assert_close(gpt_a[0, :4], gpt_b[0, :4])  # GPT's first four positions cannot see position 4
    assert (gpt_a[0, 4:] - gpt_b[0, 4:]).abs().max() > 1e-3


def test_exercise_6_4_the_tied_mlm_head_and_an_untied_one():
    from torch import nn

    from llmpath.bert.model import BERTConfig, BERTPretraining
    from llmpath.common import count_params

    V, C = 8000, 128  # the default WordPiece vocabulary, the small preset's width
    cfg = BERTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=C, n_ff=4 * C, max_len=64)
    model = BERTPretraining(cfg)
    assert count_params(model) == 1_470_786
    assert count_params(model.bert.tok) == V * C == 1_024_000  # the word embeddings: 70% of the model
    own = count_params(model.mlm) - V * C  # the head's own: dense, LayerNorm, output bias
    assert own == C * C + C + 2 * C + V == 24_768
    model.mlm.decoder.weight = nn.Parameter(model.bert.tok.weight.detach().clone())  # untie
    assert count_params(model) == 1_470_786 + V * C == 2_494_786


def test_exercise_6_5_greedy_longest_match_first_and_unk():
    from llmpath.tokenizers.wordpiece import SPECIALS

    tok = WordPiece([*SPECIALS, "un", "##aff", "##af", "##f", "##able", "##abl"])
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]  # the longest piece at every step
    no_e = WordPiece([*SPECIALS, "un", "##aff", "##abl"])
    assert no_e.tokenize("unaffable") == ["[UNK]"]  # no piece covers the last "e": the whole word is [UNK]
    assert no_e.tokenize("unaff unaffable") == ["un", "##aff", "[UNK]"]  # only that word
    # greedy is not a search: "ab" first leaves "c", which no "##" piece covers, though a + ##bc would have
    greedy = WordPiece([*SPECIALS, "a", "ab", "##bc"])
    assert greedy.tokenize("abc") == ["[UNK]"] and greedy.tokenize("a") == ["a"]
    assert [greedy.id_to_token(i) for i in (greedy.token_to_id("a"), greedy.token_to_id("##bc"))] == ["a", "##bc"]


def test_exercise_6_6_the_unigram_baseline_and_the_output_bias():
    import math

    import torch.nn.functional as F

    from llmpath.bert.data import Example, unigram_log_probs, unigram_mlm_loss
    from llmpath.bert.model import BERTConfig, BERTPretraining
    from llmpath.bert.objectives import PretrainBatch

    # vocabulary of 8: five specials, a = 5, b = 6, c = 7. Training text "a a a b"; masked targets a and c.
    train = [Example([5, 5, 5], [6], False)]
    labels = torch.tensor([[-100, 5, -100, 7]])
    held = [PretrainBatch(labels, labels, labels, torch.tensor([0]))]
    # add-one counts: 1 for each special, a 4, b 2, c 1 -> 12 in all; H = -(ln 4/12 + ln 1/12) / 2 = ln 6
    assert unigram_mlm_loss(train, held, vocab_size=8) == pytest.approx(math.log(6))
    assert unigram_log_probs(train, 8).exp().tolist() == pytest.approx([1 / 12] * 5 + [4 / 12, 2 / 12, 1 / 12])

    # unigram_bias: with the output bias at log q the untrained model already scores like the unigram model
    V = 60
    counts = torch.tensor([0.0] * 5 + [round(1000 * 2 ** (-i / 4)) for i in range(V - 5)]) + 1
    log_q = (counts / counts.sum()).log()
    torch.manual_seed(0)
    model = BERTPretraining(BERTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=32, n_ff=64, max_len=32)).eval()
    ids = torch.multinomial(log_q.exp(), 32 * 32, replacement=True, generator=torch.Generator().manual_seed(1))
    ids = ids.view(32, 32)
    with torch.no_grad():
        before = F.cross_entropy(model(ids)[0].flatten(0, 1), ids.flatten()).item()
        model.mlm.decoder.bias.copy_(log_q)
        after = F.cross_entropy(model(ids)[0].flatten(0, 1), ids.flatten()).item()
    unigram = -log_q[ids.flatten()].mean().item()
    assert abs(before - math.log(V)) < 0.05  # zero bias, tiny weights: about uniform
    assert abs(after - unigram) < 0.05 and after < before - 1
