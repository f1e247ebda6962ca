"""Word vectors (stage 8): the negative-sampling loss and gradients against a hand derivation and autograd, the
embedding updates, softmax vs negative sampling, the data pipeline's properties, the evaluations against gensim's,
the CLI end to end on the tiny preset and its one-line errors."""

import json

import numpy as np
import pytest
import torch

from llmpath.cli import main
from llmpath.config import build_config
from llmpath.config import TrainConfig
from llmpath.data.corpora import DataError
from llmpath.train import fit
from llmpath.word2vec import cli
from llmpath.word2vec.data import (Vocab, WindowBatch, WindowBatches, english_words, chinese_chars, chinese_words,
                                   keep_probs, noise_table, windows)
from llmpath.word2vec.evaluate import analogies, read_analogies, read_pairs, unit, word_pairs, eval_set_path
from llmpath.word2vec.model import (PairSGD, Word2Vec, Word2VecConfig, full_softmax, loss_fn, negative_sampling,
                                    negative_sampling_grads, verify_embedding_updates)
from llmpath.word2vec.training import load_vectors


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def w2v(*args) -> int:
    """`llmpath word2vec ...`"""
    return main(["word2vec", *args])


def random_batch(V=30, B=6, W=4, K=3, seed=0, per_pair=False) -> WindowBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, 2 * W, generator=g) > 0.3
    mask[:, 0] = True  # every window has a word
    ctx = torch.where(mask, torch.randint(0, V, (B, 2 * W), generator=g), 0)
    neg = torch.randint(0, V, (B, 2 * W, K) if per_pair else (B, K), generator=g)
    return WindowBatch(torch.randint(0, V, (B,), generator=g), ctx, mask, neg)


def model_with_weights(arch, loss="negative", V=30, C=5, **kw) -> Word2Vec:
    torch.manual_seed(1)
    m = Word2Vec(Word2VecConfig(vocab_size=V, n_embd=C, arch=arch, loss=loss, **kw))
    with torch.no_grad():  # output vectors start at 0; random ones make every term of the gradient count
        m.out.weight.normal_(0, 0.5)
        m.inp.weight.normal_(0, 0.5)
    return m


# ------------------------------------------------------------------------ loss and gradients

def test_hand_derived_gradients_equal_autograd_for_one_example():
    torch.manual_seed(0)
    h, u, un = torch.randn(5, requires_grad=True), torch.randn(5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    loss = -torch.nn.functional.logsigmoid(u @ h) - torch.nn.functional.logsigmoid(-(un @ h)).sum()
    loss.backward()
    hand = negative_sampling_grads(h.detach(), u.detach(), un.detach())
    assert torch.allclose(hand["loss"], loss.detach(), atol=1e-6)
    for name, t in (("h", h), ("u_pos", u), ("u_neg", un)):
        assert torch.allclose(hand[name], t.grad, atol=1e-6), name


@pytest.mark.parametrize("arch,update,per_pair", [("cbow", "exact", False), ("cbow", "word2vec", False),
                                                 ("skipgram", "word2vec", False), ("skipgram", "word2vec", True)])
def test_batch_loss_and_table_gradients_equal_the_hand_formula(arch, update, per_pair):
    """For a fixed batch and fixed negatives: the batched loss and the gradient of both tables, row by row."""
    m = model_with_weights(arch, cbow_update=update)
    b = random_batch(per_pair=per_pair)
    loss = negative_sampling(m, b)
    loss.backward()
    V, U = m.inp.weight.detach(), m.out.weight.detach()
    g_in, g_out, total, B = torch.zeros_like(V), torch.zeros_like(U), 0.0, len(b.centers)
    for i in range(B):
        ctx = b.contexts[i][b.mask[i]]
        if arch == "cbow":
            g = negative_sampling_grads(V[ctx].mean(0), U[b.centers[i]], U[b.negatives[i]])
            total += g["loss"]
            g_out[b.centers[i]] += g["u_pos"] / B
            g_out.index_add_(0, b.negatives[i], g["u_neg"] / B)
            # word2vec hands each context vector the whole error of h; the exact gradient of the mean is 1/n of it
            g_in.index_add_(0, ctx, (g["h"] / (len(ctx) if update == "exact" else 1) / B).expand(len(ctx), -1))
        else:
            for j in b.mask[i].nonzero().flatten():  # one example per (centre, context) pair
                o = b.contexts[i, j]
                neg = b.negatives[i, j] if per_pair else b.negatives[i]  # its own negatives, or the centre's shared set
                g = negative_sampling_grads(V[b.centers[i]], U[o], U[neg])
                total += g["loss"]
                g_in[b.centers[i]] += g["h"] / B
                g_out[o] += g["u_pos"] / B
                g_out.index_add_(0, neg, g["u_neg"] / B)
    assert torch.allclose(loss.detach(), total / B, atol=1e-5)
    assert torch.allclose(m.inp.weight.grad, g_in, atol=1e-5)
    assert torch.allclose(m.out.weight.grad, g_out, atol=1e-5)


def test_fused_and_readable_cbow_agree_in_value_and_gradient():
    fast = model_with_weights("cbow")
    slow = model_with_weights("cbow", bag=False)
    b = random_batch(seed=3)
    for m in (fast, slow):
        loss_fn(m, b).backward()
    assert torch.allclose(loss_fn(fast, b), loss_fn(slow, b), atol=1e-6)
    assert torch.allclose(fast.inp.weight.grad, slow.inp.weight.grad, atol=1e-6)
    assert torch.allclose(fast.out.weight.grad, slow.out.weight.grad, atol=1e-6)
    assert cli.smoke().startswith("tiny word2vec ok")


@pytest.mark.parametrize("arch,loss,per_pair", [("cbow", "negative", False), ("skipgram", "negative", False),
                                               ("skipgram", "negative", True), ("cbow", "softmax", False)])
def test_only_the_rows_in_the_batch_change_by_the_gradient_step(arch, loss, per_pair):
    m = model_with_weights(arch, loss, V=50)
    report = verify_embedding_updates(m, random_batch(V=30, per_pair=per_pair), lr=0.05)  # words 30..49 never appear in the batch
    assert report["max_error"] < 1e-6
    assert 0 < report["rows_changed"]["inp.weight"] <= report["rows_in_batch"]["inp.weight"] < 50
    if loss == "negative":
        assert report["rows_changed"]["out.weight"] <= report["rows_in_batch"]["out.weight"] <= 30


def test_full_softmax_and_negative_sampling_learn_the_same_neighbours():
    """Two topics of 8 words each, sentences never mixing them: with either loss each word's nearest neighbour
    is from its own topic."""
    rng = np.random.default_rng(0)
    sents = [rng.integers(0, 8, 12) + 8 * (i % 2) for i in range(300)]
    vocab = Vocab([str(i) for i in range(16)], np.bincount(np.concatenate(sents), minlength=16))
    batches = WindowBatches(sents, vocab, window=3, batch_size=64, negative=4, sample=0, seed=0)
    cfg = TrainConfig(max_steps=150, lr=0.05, schedule="linear", min_lr_ratio=0.01, warmup_steps=0, weight_decay=0,
                      grad_clip=0, eval_interval=0, log_interval=1000, progress=False)
    for loss in ("softmax", "negative"):
        torch.manual_seed(0)
        m = Word2Vec(Word2VecConfig(vocab_size=16, n_embd=8, arch="skipgram", loss=loss))
        fit(m, loss_fn, batches, cfg, optimizer=PairSGD(m.parameters(), cfg.lr, 64))
        u = unit(m.vectors().numpy())
        sims = u @ u.T
        np.fill_diagonal(sims, -2)
        same = (sims.argmax(1) // 8) == (np.arange(16) // 8)
        assert same.mean() >= 0.9, (loss, same)


def test_softmax_loss_at_initialisation_is_log_v():
    m = Word2Vec(Word2VecConfig(vocab_size=30, n_embd=5, arch="cbow", loss="softmax"))  # output vectors at 0
    assert abs(full_softmax(m, random_batch()).item() - np.log(30)) < 1e-5


# ------------------------------------------------------------------------------ data

def test_tokenizers():
    assert english_words("The King's 2 sons.") == ["the", "king's", "2", "sons"]
    assert chinese_chars("好吃！ok") == ["好", "吃"]
    assert chinese_words("今天的菜很好吃！") == ["今天", "的", "菜", "很", "好吃"]


def test_vocab_min_count_and_order():
    v = Vocab.build([["b", "a", "b", "c"], ["a", "b"]], min_count=2)
    assert v.words == ["b", "a"] and v.counts.tolist() == [3, 2]
    assert [e.tolist() for e in v.encode([["c", "a", "b"]])] == [[1, 0]]
    with pytest.raises(DataError, match="lower --min_count"):
        Vocab.build([["a", "b"]], min_count=5)


def test_subsampling_keep_probabilities():
    counts = np.array([100_000, 1_000, 10])  # frequencies ~0.99, ~0.0099, ~0.000099
    p = keep_probs(counts, 1e-3)
    f = counts / counts.sum()
    assert np.allclose(p, np.minimum(1, (np.sqrt(f / 1e-3) + 1) * 1e-3 / f))
    assert p[0] < 0.05 and p[2] == 1.0 and np.all(np.diff(p) >= 0)
    assert np.all(keep_probs(counts, 0) == 1)


def test_noise_table_follows_the_three_quarter_power():
    counts = np.array([1000, 100, 10, 1])
    table = noise_table(counts, size=100_000)
    want = counts ** 0.75 / (counts ** 0.75).sum()
    assert np.allclose(np.bincount(table) / len(table), want, atol=1e-4)


def test_windows_stay_in_their_sentence_and_shrink_at_random():
    ids = np.arange(2000)
    starts = np.repeat([0, 1000], 1000)  # two sentences of 1000 words
    ctx, mask = windows(ids, starts, window=4, rng=np.random.default_rng(0))
    pos = np.arange(2000)[:, None]
    offsets = np.r_[-4, -3, -2, -1, 1, 2, 3, 4]
    assert np.all(ctx[mask] == (pos + offsets)[mask])  # ids are positions here
    assert not mask[999, 4:].any() and not mask[1000, :4].any()  # no window crosses the sentence boundary
    inner = mask[10:990]
    share = inner.mean(0)  # P(distance d is in the window) = (w - d + 1) / w
    assert np.allclose(share, [1 / 4, 2 / 4, 3 / 4, 1, 1, 3 / 4, 2 / 4, 1 / 4], atol=0.04)


def test_batches_are_a_pure_function_of_the_step():
    rng = np.random.default_rng(0)
    sents = [rng.integers(0, 20, 15) for _ in range(50)]
    vocab = Vocab([str(i) for i in range(20)], np.bincount(np.concatenate(sents), minlength=20))
    a = WindowBatches(sents, vocab, window=2, batch_size=32, negative=3, sample=1e-2, seed=5)
    b = WindowBatches(sents, vocab, window=2, batch_size=32, negative=3, sample=1e-2, seed=5)
    later = a(a.per_epoch + 1)
    for x, y in zip(later, b(b.per_epoch + 1)):
        assert torch.equal(x, y)
    assert a(0).centers.shape == (32,) and a(0).contexts.shape == (32, 4) and a(0).negatives.shape == (32, 3)


# ------------------------------------------------------------------------------ evaluation

@pytest.fixture(scope="module")
def keyed_vectors():
    """gensim KeyedVectors of random vectors over the evaluation sets' words (some dropped, to have OOV)."""
    from gensim.models import KeyedVectors

    words = sorted({w for a, b, _ in read_pairs("wordsim353") + read_pairs("simlex999") for w in (a, b)}
                   | {w for _, qs in read_analogies()[:3] for q in qs for w in q})
    rng = np.random.default_rng(0)
    words = [w for w in words if rng.random() > 0.1]
    vecs = dict(zip(words, rng.normal(size=(len(words), 6))))
    offset = rng.normal(size=6)
    for a, b, _, _ in read_analogies()[0][1]:  # capital -> country is one shared offset: those analogies can work
        if a in vecs and b in vecs:
            vecs[b] = vecs[a] + offset + 0.3 * rng.normal(size=6)
    kv = KeyedVectors(vector_size=6)
    kv.add_vectors(words, np.array([vecs[w] for w in words], dtype=np.float32))
    return kv


@pytest.mark.parametrize("name", ["wordsim353", "simlex999"])
def test_word_pairs_equal_gensim(keyed_vectors, name):
    ours = word_pairs(keyed_vectors.vectors, keyed_vectors.key_to_index, name)
    pearson, spearman, oov_ratio = keyed_vectors.evaluate_word_pairs(str(eval_set_path(name)))
    assert ours["spearman"] == pytest.approx(spearman.statistic, abs=1e-6)
    assert ours["pearson"] == pytest.approx(pearson.statistic, abs=1e-6)
    assert ours["oov"] / (ours["oov"] + ours["pairs"]) * 100 == pytest.approx(oov_ratio)


def test_analogies_equal_gensim(keyed_vectors):
    ours = analogies(keyed_vectors.vectors, keyed_vectors.key_to_index)
    score, sections = keyed_vectors.evaluate_word_analogies(str(eval_set_path("analogies")))
    total = sections[-1]
    assert ours["questions"] == len(total["correct"]) + len(total["incorrect"])
    assert ours["accuracy"] > 0.01 and ours["accuracy"] == pytest.approx(score, abs=2 / ours["questions"])


# ------------------------------------------------------------------------------ command line

def test_errors_are_one_line(capsys):
    cases = [(("train", "--preset=smal"), "unknown preset 'smal'"),
             (("train", "--corpus=wikii", "--preset=tiny"), "unknown corpus 'wikii'"),
             (("train", "--preset=tiny", "--train.grad_clip=1"), "plain SGD"),
             (("train", "--preset=tiny", "--model.sparse=true"), "sparse"),
             (("compare", "--preset=tiny", "--archs=glove"), "choose cbow, skipgram"),
             (("neighbors", "--run=/nonexistent/w2v"), "train them first")]
    for argv, message in cases:
        assert w2v(*argv, "--out=/tmp/llmpath-w2v-never") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (argv, err)


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path, capsys):
    """train -> results and checkpoint -> neighbours -> reuse -> compare with gensim -> figures, on the tiny preset."""
    assert w2v("train", "--preset=tiny", f"--out={tmp_path}") == 0
    res = json.loads((tmp_path / "word2vec" / "tiny" / "results.json").read_text())
    assert res["steps"] >= 1 and np.isfinite(res["train_loss"]) and res["words_per_s"] > 0
    vecs = load_vectors(tmp_path / "word2vec" / "tiny")
    assert vecs.matrix.shape == (res["vocab_size"], 16) and vecs.index[vecs.words[3]] == 3
    capsys.readouterr()
    assert w2v("neighbors", "--preset=tiny", f"--out={tmp_path}", "--words=king", "--k=3") == 0
    assert capsys.readouterr().out.startswith("king: ")
    assert w2v("neighbors", "--preset=tiny", f"--out={tmp_path}", "--words=qwertyuiop") == 2
    assert "not in the vocabulary" in capsys.readouterr().err
    assert w2v("train", "--preset=tiny", f"--out={tmp_path}") == 0
    assert "already holds this run" in capsys.readouterr().err
    cfg = build_config(cli.CompareRun, ["--preset=tiny", f"--out={tmp_path}", "--seeds=1", "--archs=cbow"], cli.PRESETS)
    summary = cli.compare(cfg)
    assert set(summary["means"]) == {"ours-cbow", "gensim-cbow"}
    assert summary["means"]["ours-cbow"]["vocab_size"] == summary["means"]["gensim-cbow"]["vocab_size"]
    assert "gensim CBOW" in capsys.readouterr().out
    shown = cli.figures(build_config(cli.FiguresRun, ["--preset=tiny", f"--out={tmp_path}"], cli.PRESETS))
    assert shown and all(p.stat().st_size > 5_000 for p in shown)
