"""Stage 3: data pipeline, attention masking, decoding (beam 1 == greedy), the synthetic task, the CLI."""

import pytest
import torch

from llmpath.seq2seq.data import (BOS, EOS, PAD, UNK, Vocab, detokenize_en, detokenize_zh, eval_batches,
                                  load_translation, make_batches, tokenize_en, tokenize_zh)
from llmpath.seq2seq.decode import beam_search, greedy
from llmpath.seq2seq.metrics import bleu, chrf
from llmpath.seq2seq.model import (ATTENTIONS, AdditiveAttention, DotAttention, GeneralAttention, Seq2Seq,
                                   Seq2SeqConfig, reverse_padded, seq2seq_loss)

ATTN = [a for a in ATTENTIONS if a != "none"]


# ------------------------------------------------------------------ data

def test_tokenizers_roundtrip():
    assert tokenize_zh("我想 喝水。") == ["我", "想", "喝", "水", "。"]
    assert tokenize_en("Thank you! You're welcome.") == ["thank", "you", "!", "you're", "welcome", "."]
    assert detokenize_en(["thank", "you", "!", "you're", "welcome", "."]) == "Thank you! You're welcome."
    assert detokenize_zh(["我", "想", "喝", "水", "。"]) == "我想喝水。"


def test_vocab():
    v = Vocab.build([["a", "b", "a"], ["c"]], min_freq=1)
    assert v.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and v.itos[4] == "a" and len(v) == 7
    ids = v.encode(["a", "zzz"], add_bos=True, add_eos=True)
    assert ids == [BOS, v.stoi["a"], UNK, EOS]
    assert v.decode([BOS, v.stoi["a"], PAD, v.stoi["b"], EOS, v.stoi["c"]]) == ["a", "b"]
    assert Vocab.from_state_dict(v.state_dict()).itos == v.itos
    assert len(Vocab.build([["a", "b", "a"], ["c"]], min_freq=2)) == 5


def test_translation_split_and_batches():
    d = load_translation("hsk-pairs", "zh-en", seed=0)
    n = len(d.train) + len(d.val) + len(d.test)
    assert n == 4354 - 65 and abs(len(d.train) / n - 0.9) < 0.01 and d.src_lang == "zh" and d.tgt_lang == "en"
    assert load_translation("hsk-pairs", "zh-en", seed=0).test[0].src_text == d.test[0].src_text
    r = load_translation("hsk-pairs", "en-zh", seed=0)
    assert r.test[0].tgt_text == d.test[0].src_text and r.src_lang == "en"
    b = make_batches(d.train, d.src_vocab, d.tgt_vocab, 16, seed=0)(0)
    assert b["src"].shape[0] == 16 and (b["tgt_in"][:, 0] == BOS).all()
    # tgt_out is tgt_in shifted left, ending with EOS before the padding
    for i in range(16):
        L = int((b["tgt_out"][i] != PAD).sum())
        assert b["tgt_out"][i, L - 1] == EOS and torch.equal(b["tgt_out"][i, : L - 1], b["tgt_in"][i, 1:L])
        assert int((b["src"][i] != PAD).sum()) == b["src_len"][i]
    assert sum(x["src"].shape[0] for x in eval_batches(d.test, d.src_vocab, d.tgt_vocab, 50)) == len(d.test)


def test_metrics():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"], "en") == pytest.approx(100)
    assert bleu(["The cat sat on the mat"], ["the cat sat on the mat"], "en", lowercase=True) == pytest.approx(100)
    assert bleu(["我想喝水。"], ["我想喝水。"], "zh") == pytest.approx(100)
    assert bleu(["我想喝水"], ["我想喝咖啡"], "zh") < 100  # character-level for Chinese
    assert 0 < chrf(["hello there"], ["hello here"], "en") < 100


def test_bleu_bootstrap_matches_corpus_bleu():
    from llmpath.seq2seq.metrics import bleu_bootstrap

    refs = ["the cat sat on the mat .", "a dog runs in the park", "i like tea very much", "he is my teacher"] * 5
    good = ["the cat sat on a mat .", "a dog runs in a park", "i like tea", "he is my teacher"] * 5
    bad = ["the cat sat in a box", "dog park", "i like tea", "he is"] * 5  # no 4-gram match: smoothed, not 0
    r = bleu_bootstrap(good, bad, refs, n=100)
    assert r["gain"] == pytest.approx(bleu(good, refs) - bleu(bad, refs)) and bleu(bad, refs) > 0
    assert 0 < r["lo"] <= r["gain"] <= r["hi"] and r["p_le_0"] == 0
    same = bleu_bootstrap(good, good, refs, n=20)
    assert same["gain"] == same["lo"] == same["hi"] == 0


# ------------------------------------------------------------------ attention and masking

def test_reverse_padded():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    assert reverse_padded(x, torch.tensor([3, 4])).tolist() == [[3, 2, 1, 0], [7, 6, 5, 4]]


@pytest.mark.parametrize("attn", [AdditiveAttention(6, 6, 5), DotAttention(), GeneralAttention(6, 6)])
def test_attention_masks_and_sums_to_one(attn):
    torch.manual_seed(0)
    q, k = torch.randn(3, 6), torch.randn(3, 7, 6)
    mask = torch.arange(7)[None] < torch.tensor([7, 4, 1])[:, None]
    ctx, w = attn(q, k, mask)
    assert torch.allclose(w.sum(-1), torch.ones(3), atol=1e-6)
    assert (w[~mask] == 0).all()
    k2 = k.clone()
    k2[~mask] = 100.0  # garbage in padded positions changes nothing
    ctx2, w2 = attn(q, k2, mask)
    assert torch.allclose(ctx, ctx2, atol=1e-6) and torch.allclose(w, w2, atol=1e-6)


def test_scaled_scores_and_general_reads_the_encoder():
    torch.manual_seed(0)
    q, k, mask = torch.randn(2, 6), torch.randn(2, 5, 6), torch.ones(2, 5, dtype=torch.bool)
    pre = k
    assert torch.allclose(DotAttention(0.5).score(q, k, pre), 0.5 * torch.einsum("bh,bsh->bs", q, k), atol=1e-6)
    m = Seq2Seq(Seq2SeqConfig(src_vocab=20, tgt_vocab=20, attention="general", emb=8, hidden=12))
    assert m.attention.W.weight.shape == (12, 24) and m.attention.scale == pytest.approx(12 ** -0.5)
    mem, _, _ = m.encode(torch.randint(4, 20, (2, 5)), torch.tensor([5, 3]))
    assert mem.pre.shape == (2, 5, 12)  # W_a h_j from the (B,S,2H) encoder outputs
    assert Seq2Seq(Seq2SeqConfig(attention="dot", hidden=12, scale=False)).attention.scale == 1.0


def _model(att, impl="ours", cell="gru", V=20):
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(src_vocab=V, tgt_vocab=V, attention=att, cell=cell, emb=8, hidden=12, attn_dim=6,
                                 dropout=0.0, impl=impl)).eval()


@pytest.mark.parametrize("att", ATTENTIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padding_does_not_change_outputs(att, cell):
    """A sentence alone and the same sentence padded inside a longer batch give the same logits."""
    m = _model(att, cell=cell)
    src = torch.tensor([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 10]])
    src_len = torch.tensor([3, 6])
    tgt = torch.tensor([[BOS, 4, 5, 6], [BOS, 4, 5, 6]])
    with torch.no_grad():
        lg, w = m(src, src_len, tgt)
        alone, w1 = m(src[:1, :3], src_len[:1], tgt[:1])
        src_garbage = src.clone()
        src_garbage[0, 3:] = 11  # other tokens where the padding was
        lg2, _ = m(src_garbage, src_len, tgt)
    assert torch.allclose(lg[0], alone[0], atol=1e-5)
    assert torch.allclose(lg[0], lg2[0], atol=1e-5)
    if w is not None:
        assert (w[0, :, 3:] == 0).all()
        assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)
        assert torch.allclose(w[0, :, :3], w1[0], atol=1e-5)


def test_ours_equals_torch_impl():
    a, b = _model("bahdanau", "ours"), _model("bahdanau", "torch")
    b.load_state_dict(a.state_dict())
    src, n, tgt = torch.randint(4, 20, (3, 5)), torch.tensor([5, 2, 4]), torch.randint(4, 20, (3, 4))
    with torch.no_grad():
        assert torch.allclose(a(src, n, tgt)[0], b(src, n, tgt)[0], atol=1e-5)


def test_loss_ignores_padding():
    m = _model("dot")
    batch = {"src": torch.tensor([[5, 6, 7]]), "src_len": torch.tensor([3]), "tgt_in": torch.tensor([[BOS, 4, 5]]),
             "tgt_out": torch.tensor([[4, 5, EOS]])}
    padded = {"src": torch.tensor([[5, 6, 7, 0]]), "src_len": torch.tensor([3]),
              "tgt_in": torch.tensor([[BOS, 4, 5, PAD, PAD]]), "tgt_out": torch.tensor([[4, 5, EOS, PAD, PAD]])}
    assert torch.allclose(seq2seq_loss(m, batch), seq2seq_loss(m, padded), atol=1e-6)


# ------------------------------------------------------------------ decoding

@pytest.mark.parametrize("att", ATTENTIONS)
def test_beam_one_is_greedy(att):
    m = _model(att)
    torch.manual_seed(1)
    src, n = torch.randint(4, 20, (4, 6)), torch.tensor([6, 3, 5, 1])
    g, b = greedy(m, src, n, 12), beam_search(m, src, n, 1, 1.0, 12)
    assert torch.equal(g.tokens, b.tokens)


def _bias_eos(m, step_to_eos):
    """Hook the output layer so that a model emits EOS early: decoding must stop and pad."""
    with torch.no_grad():
        m.out.bias[EOS] += step_to_eos


@pytest.mark.parametrize("att", ["none", "bahdanau", "general"])
def test_beam_search_properties(att):
    m = _model(att)
    torch.manual_seed(2)
    src, n = torch.randint(4, 20, (3, 6)), torch.tensor([6, 4, 2])
    for k in (2, 4):
        b = beam_search(m, src, n, k, 0.0, 10)
        assert b.tokens.shape[0] == 3
        if b.attn is not None:
            assert b.attn.shape[:2] == b.tokens.shape and b.attn.shape[2] == 6
        # after EOS only PAD
        for row in b.tokens.tolist():
            if EOS in row:
                assert all(t == PAD for t in row[row.index(EOS) + 1:])
    _bias_eos(m, 50.0)
    assert (beam_search(m, src, n, 3, 1.0, 10).tokens[:, 0] == EOS).all()


def test_beam_finds_better_or_equal_sequences_than_greedy():
    """Rescoring both outputs with the model: beam's total log-prob is >= greedy's (alpha = 0)."""
    m = _model("bahdanau")
    torch.manual_seed(3)
    src, n = torch.randint(4, 20, (6, 5)), torch.full((6,), 5)
    g, b = greedy(m, src, n, 8), beam_search(m, src, n, 5, 0.0, 8)
    finished = (g.tokens == EOS).any(1) & (b.tokens == EOS).any(1)
    assert (b.scores[finished] >= g.scores[finished] - 1e-4).all()


# ------------------------------------------------------------------ learning

@pytest.mark.slow
def test_synthetic_task_learns(tmp_path):
    """Date-format conversion ('2024-03-15' -> '15 march 2024') reaches >= 99% exact match with attention."""
    from llmpath.config import build_config
    from llmpath.seq2seq.cli import PRESETS, Seq2SeqRun, train

    cfg = build_config(Seq2SeqRun, ["--preset=tiny", "--data=dates", f"--out={tmp_path}", "--train.max_steps=200",
                                    "--hidden=64", "--emb=32", "--train.lr=1e-2", "--train.batch_size=64",
                                    "--dropout=0", "--impl=torch", "--train.progress=false", "--beam=2"], PRESETS)
    s = train(cfg)
    assert s["test"]["greedy"]["exact_match"] >= 99.0, s["test"]["greedy"]
    assert s["test"]["beam"]["exact_match"] >= 99.0


def test_cli_train_translate_plot(tmp_path, capsys):
    from llmpath.cli import main
    from llmpath.runs import load_run
    from llmpath.seq2seq.data import DETOKENIZE
    from llmpath.seq2seq.decode import translate_batch

    out = str(tmp_path)
    assert main(["seq2seq", "train", "--preset=tiny", f"--out={out}", "--train.max_steps=3", "--no-progress"]) == 0
    run = tmp_path / "seq2seq" / "tiny-bahdanau"
    assert (run / "results.json").exists() and (run / "config.json").exists()
    model, vocab, cfg = load_run(run)  # the checkpoint alone rebuilds the model and both vocabularies
    assert (vocab.src_lang, vocab.tgt_lang, cfg.model.tgt_vocab) == ("zh", "en", len(vocab.tgt_vocab))
    capsys.readouterr()
    png = tmp_path / "align.png"
    assert main(["seq2seq", "translate", "我想喝水。", "--preset=tiny", f"--out={out}", f"--plot={png}"]) == 0
    src = list("我想喝水。")
    want = translate_batch(model, torch.tensor([vocab.src_vocab.encode(src)]), torch.tensor([len(src)]), cfg.beam,
                           cfg.length_penalty, cfg.max_len)
    assert capsys.readouterr().out == DETOKENIZE["en"](vocab.tgt_vocab.decode(want.tokens[0])) + "\n"
    assert png.exists() and png.stat().st_size > 1000
    assert main(["seq2seq", "translate", "x", "--preset=tiny", f"--out={out}", "--attention=dot"]) == 2  # not trained


def test_compare_judges_only_the_models_it_trains(tmp_path):
    """A run that happens to exist in the folder is shown in the table but never decides the bar (the tour)."""
    from llmpath.config import build_config
    from llmpath.seq2seq.cli import PRESETS, Seq2SeqRun, compare, results_table, train

    args = ["--preset=tiny", f"--out={tmp_path}", "--train.max_steps=2", "--no-progress", "--beam=1"]
    train(build_config(Seq2SeqRun, args + ["--attention=dot"], PRESETS))
    res = compare(build_config(Seq2SeqRun, args, PRESETS), attentions=("none", "bahdanau"))
    assert set(res["runs"]) == {"none", "bahdanau", "dot"} and res["bar"]["checked"] == ["bahdanau"]
    assert "Luong dot" in results_table(res)


def test_attention_stats_tell_uniform_from_saturated():
    from llmpath.seq2seq.cli import attention_stats

    torch.manual_seed(0)
    m = _model("dot")
    batches = [{"src": torch.randint(4, 20, (3, 6)), "src_len": torch.tensor([6, 4, 2]),
                "tgt_in": torch.randint(4, 20, (3, 5)), "tgt_out": torch.randint(4, 20, (3, 5))}]
    with torch.no_grad():
        m.to_keys.weight.zero_()  # all scores 0: uniform attention
        s = attention_stats(m, batches)
        assert s["attn_entropy"] == pytest.approx(1.0, abs=1e-5) and s["score_std"] == pytest.approx(0.0, abs=1e-4)
        m.to_keys.weight.normal_(0, 300.0)  # huge scores: near one-hot rows
        s = attention_stats(m, batches)
        assert s["attn_entropy"] < 0.2 and s["score_std"] > 5
    assert attention_stats(_model("none"), batches) == {}


# ------------------------------------------------------------------ exercises of tutorial 03

def test_exercise_3_1_mask_before_softmax():
    """-inf before the softmax == zero-and-renormalise after it; zeroing without renormalising loses weight."""
    torch.manual_seed(0)
    scores = torch.randn(2, 6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    before = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # what Attention.forward does
    after = torch.softmax(scores, dim=-1) * mask  # the exercise's variant
    assert after[0].sum() < 1 - 1e-3 and torch.allclose(after[1].sum(), torch.tensor(1.0))
    torch.testing.assert_close(after / after.sum(-1, keepdim=True), before)
    # the model's attention gives the same weights on a padded row
    keys = torch.randn(2, 6, 8)
    _, w = DotAttention()(torch.randn(2, 8), keys, mask)
    assert torch.all(w[0, 4:] == 0) and torch.allclose(w.sum(-1), torch.ones(2))


def test_exercise_3_2_softmax_saturation():
    """d alpha_j / d e_k = alpha_j (delta_jk - alpha_k); it vanishes at a one-hot; q.m has std sqrt(H)."""
    from torch.autograd.functional import jacobian

    e = torch.tensor([0.3, -1.0, 2.0, 0.5])
    a = torch.softmax(e, 0)
    torch.testing.assert_close(jacobian(lambda x: torch.softmax(x, 0), e), torch.diag(a) - a[:, None] * a[None, :])
    saturated = e * 40  # scores with a spread of ~40: a one-hot softmax
    assert jacobian(lambda x: torch.softmax(x, 0), saturated).abs().max() < 1e-10
    H = 128
    g = torch.Generator().manual_seed(0)
    q, m = torch.randn(20_000, H, generator=g), torch.randn(20_000, H, generator=g)
    std = (q * m).sum(-1).std()
    assert abs(std / H ** 0.5 - 1) < 0.05 and abs((q * m).sum(-1).div(H ** 0.5).std() - 1) < 0.05


def test_exercise_3_3_length_penalty():
    """A: 4 tokens, log p -4.0; B: 8 tokens, log p -5.5. alpha 0 picks A, alpha 1 picks B."""
    from llmpath.seq2seq.decode import length_penalty

    logp, n = torch.tensor([-4.0, -5.5]), torch.tensor([4, 8])
    assert (logp / length_penalty(n, 0.0)).argmax() == 0
    ranked = logp / length_penalty(n, 1.0)
    torch.testing.assert_close(ranked, torch.tensor([-4.0 / 1.5, -5.5 / (13 / 6)]))
    assert ranked.argmax() == 1


def test_exercise_3_4_attention_parameters():
    """Bahdanau - none = W_q + W_k (+bias) + v = 16,512; general - dot = W_a (2H x H) = 32,768 (small preset sizes)."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    sizes = dict(src_vocab=1700, tgt_vocab=3900, emb=64, hidden=128, attn_dim=64)
    model = {a: n(Seq2Seq(Seq2SeqConfig(attention=a, **sizes))) for a in ATTENTIONS}
    assert model["bahdanau"] - model["none"] == 128 * 64 + (128 * 64 + 64) + 64 == 16_512
    assert model["general"] - model["dot"] == 256 * 128 == 32_768
    assert n(AdditiveAttention(128, 128, 64)) == 16_512
    # the tutorial's table: 1,261,244 - 1,244,732 and 1,269,180 - 1,236,412
    assert (1_261_244 - 1_244_732, 1_269_180 - 1_236_412) == (16_512, 32_768)


def test_exercise_3_5_the_backward_direction_must_not_read_padding():
    """A bidirectional RNN reading right-to-left over padding changes the backward half; reversing within the length does not."""
    torch.manual_seed(0)
    H = 6
    rnn = torch.nn.GRU(4, H, batch_first=True, bidirectional=True)
    x = torch.randn(1, 3, 4)
    padded = torch.cat([x, torch.zeros(1, 2, 4)], dim=1)  # two <pad> with a zero embedding
    alone, in_batch = rnn(x)[0][0], rnn(padded)[0][0, :3]
    torch.testing.assert_close(alone[:, :H], in_batch[:, :H])  # forward half: padding comes after
    assert not torch.allclose(alone[:, H:], in_batch[:, H:], atol=1e-4)  # backward half read the padding first
    # the fix: a one-way RNN over each row reversed within its own length
    bwd = torch.nn.GRU(4, H, batch_first=True)
    ref = reverse_padded(bwd(reverse_padded(x, torch.tensor([3])))[0], torch.tensor([3]))
    got = reverse_padded(bwd(reverse_padded(padded, torch.tensor([3])))[0], torch.tensor([3]))[:, :3]
    torch.testing.assert_close(ref, got)
