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
