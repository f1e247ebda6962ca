"""Stage 6 BERT model against Hugging Face transformers: equal MLM/NSP logits (both attention paths, padding in the
batch), masked-only logits, equal losses and gradients of every parameter, BertForSequenceClassification, export to
and import from folders; padding invariance, attention maps, the MLM + NSP objectives and their metrics. The CLI,
data and WordPiece tests are in test_bert.py, test_bert_data.py and test_wordpiece.py."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpath.bert.hf import config_from_hf, config_to_hf, from_hf, from_hf_state_dict, to_hf, to_hf_state_dict
from llmpath.bert.model import IGNORE, BERT, BERTClassifier, BERTConfig, BERTPretraining
from llmpath.bert.objectives import PretrainBatch, mlm_nsp_metrics, pretrain_loss
from llmpath.config import ConfigError

from helpers import perturb

try:
    import transformers
except ImportError:  # the dev extra installs it; without it only the comparisons are skipped
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="needs transformers (pip install -e .[dev])")

V, PAD = 100, 0
CFG = BERTConfig(vocab_size=V, max_len=16, n_layer=2, n_head=4, n_embd=32, n_ff=64, dropout=0.0, pad_id=PAD)


def ours(seed: int = 0, **kw) -> BERTPretraining:
    torch.manual_seed(seed)
    return perturb(BERTPretraining(replace(CFG, **kw)), seed).eval()


def hf_pretraining(seed: int = 0, attn: str = "sdpa", cls=None, **kw):
    """A random BertForPreTraining (or `cls`) of CFG's shape, dropout off, weights perturbed; no hub."""
    torch.manual_seed(seed)
    cfg = config_to_hf(CFG, **kw)
    cfg._attn_implementation = attn
    return perturb((cls or transformers.BertForPreTraining)(cfg), seed).eval()


def batch(seed: int = 0) -> PretrainBatch:
    """3 pairs of 12 positions: row 1 padded after 7 tokens, row 2 after 10; about a quarter of real tokens masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (3, 12), generator=g)
    lengths = torch.tensor([12, 7, 10])
    real = torch.arange(12)[None, :] < lengths[:, None]
    ids[~real] = PAD
    segments = ((torch.arange(12)[None, :] >= lengths[:, None] // 2) & real).long()  # A then B, padding in A
    chosen = (torch.rand(3, 12, generator=g) < 0.25) & real
    chosen[:, 1] = True  # at least one per row
    labels = torch.where(chosen, torch.randint(1, V, (3, 12), generator=g), torch.full_like(ids, IGNORE))
    return PretrainBatch(ids, segments, labels, torch.tensor([0, 1, 0]))


def hf_kwargs(b: PretrainBatch) -> dict:
    return dict(input_ids=b.ids, token_type_ids=b.segments, attention_mask=(b.ids != PAD).long())


def grads(named) -> dict:
    return {n: p.grad for n, p in named}


# ----------------------------------------------------------------------------- Hugging Face equality

@needs_hf
@pytest.mark.parametrize("sdpa", [True, False])
@pytest.mark.parametrize("direction", ["hf->ours", "ours->hf"])
def test_pretraining_logits_equal_huggingface(sdpa, direction):
    if direction == "hf->ours":
        hf = hf_pretraining(attn="sdpa" if sdpa else "eager")
        model = from_hf(hf, sdpa=sdpa)
    else:
        model = ours(sdpa=sdpa)
        hf = hf_pretraining(seed=1, attn="sdpa" if sdpa else "eager")
        hf.load_state_dict(to_hf_state_dict(model))  # strict: every Hugging Face tensor gets one of ours
    assert isinstance(model, BERTPretraining) and model.cfg.sdpa is sdpa
    b = batch()
    real = b.ids != PAD
    with torch.no_grad():
        mlm, nsp = model(b.ids, b.segments)  # the padding mask comes from pad_id
        ref = hf(**hf_kwargs(b))
    # Hugging Face also scores the pad positions (from states nothing reads); compare the real tokens
    torch.testing.assert_close(mlm[real], ref.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, atol=1e-5, rtol=1e-5)


def test_masked_only_logits_are_the_full_logits_at_the_masked_positions():
    model, b = ours(), batch()
    with torch.no_grad():
        full, nsp_full = model(b.ids, b.segments)
        masked, nsp = model(b.ids, b.segments, mlm_labels=b.mlm_labels)
    picked = b.mlm_labels != IGNORE
    assert full.shape == (3, 12, V) and masked.shape == (int(picked.sum()), V)
    torch.testing.assert_close(masked, full[picked], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(nsp, nsp_full)


@needs_hf
@pytest.mark.parametrize("sdpa", [True, False])
def test_loss_and_every_gradient_equal_huggingface(sdpa):
    hf = hf_pretraining(attn="sdpa" if sdpa else "eager")
    model = from_hf(hf, sdpa=sdpa)
    b = batch(1)._replace(nsp_labels=torch.tensor([1, IGNORE, 0]))  # a pair without an NSP label is left out
    loss_hf = hf(**hf_kwargs(b), labels=b.mlm_labels, next_sentence_label=b.nsp_labels).loss
    loss = pretrain_loss(model, b)
    torch.testing.assert_close(loss, loss_hf, atol=1e-5, rtol=1e-5)
    loss.backward()
    loss_hf.backward()
    mine = grads(model.named_parameters())  # tied weights once: bert.tok.weight also holds the decoder's gradient
    theirs = from_hf_state_dict(grads(hf.named_parameters()))
    assert set(mine) == set(theirs) and len(mine) == 5 + 16 * CFG.n_layer + 2 + 5 + 2
    for name, g in mine.items():
        torch.testing.assert_close(g, theirs[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@needs_hf
@pytest.mark.parametrize("direction", ["hf->ours", "ours->hf"])
def test_classifier_equals_bert_for_sequence_classification(direction):
    if direction == "hf->ours":
        hf = hf_pretraining(cls=transformers.BertForSequenceClassification, n_classes=3)
        clf = from_hf(hf)
    else:
        torch.manual_seed(0)
        clf = perturb(BERTClassifier(BERT(CFG), 3, dropout=0.0)).eval()
        hf = hf_pretraining(seed=1, cls=transformers.BertForSequenceClassification, n_classes=3)
        hf.load_state_dict(to_hf_state_dict(clf))
    assert isinstance(clf, BERTClassifier) and clf.head.out_features == 3
    b, y = batch(2), torch.tensor([2, 0, 1])
    logits = clf(b.ids, b.segments)
    ref = hf(**hf_kwargs(b), labels=y)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=1e-5)
    loss = F.cross_entropy(logits, y)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    ref.loss.backward()
    mine, theirs = grads(clf.named_parameters()), from_hf_state_dict(grads(hf.named_parameters()))
    assert set(mine) == set(theirs)
    for name, g in mine.items():
        torch.testing.assert_close(g, theirs[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@needs_hf
def test_export_loads_in_transformers_and_back(tmp_path):
    model, b = ours(seed=3), batch(3)
    real = b.ids != PAD
    to_hf(model, tmp_path / "pre")
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "pre", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        mlm, nsp = model(b.ids, b.segments)
        ref = hf.eval()(**hf_kwargs(b))
        torch.testing.assert_close(ref.prediction_logits[real], mlm[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref.seq_relationship_logits, nsp, atol=1e-5, rtol=1e-5)
        # back from our folder and from transformers' own save_pretrained: bit-identical weights
        hf.save_pretrained(tmp_path / "saved")
        for again in (from_hf(tmp_path / "pre"), from_hf(tmp_path / "saved")):
            assert isinstance(again, BERTPretraining) and again.cfg == model.cfg
            assert again.mlm.decoder.weight is again.bert.tok.weight  # still tied after loading
            assert torch.equal(again(b.ids, b.segments)[0], mlm)


@needs_hf
def test_classifier_export_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    clf = perturb(BERTClassifier(BERT(CFG), 4, dropout=0.2)).eval()
    hf = transformers.BertForSequenceClassification.from_pretrained(to_hf(clf, tmp_path)).eval()
    assert hf.config.num_labels == 4 and hf.config.classifier_dropout == 0.2
    b = batch(4)
    with torch.no_grad():
        torch.testing.assert_close(hf(**hf_kwargs(b)).logits, clf(b.ids, b.segments), atol=1e-5, rtol=1e-5)
    back = from_hf(tmp_path)
    assert isinstance(back, BERTClassifier) and back.drop.p == 0.2


@needs_hf
def test_bare_bert_maps_to_bert_model():
    hf = hf_pretraining(cls=transformers.BertModel)
    bert = from_hf(hf)
    assert isinstance(bert, BERT)
    assert set(to_hf_state_dict(bert)) == set(hf.state_dict())
    b = batch()
    real = b.ids != PAD
    with torch.no_grad():
        h, pooled = bert(b.ids, b.segments)
        ref = hf(**hf_kwargs(b))
    torch.testing.assert_close(h[real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_unsupported_variants():
    pytest.importorskip("transformers")
    cfg = replace(CFG, dropout=0.1, layer_norm_eps=1e-7, pad_id=3, type_vocab_size=3)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    assert config_from_hf(config_to_hf(cfg), dropout=0.0, sdpa=False) == replace(cfg, dropout=0.0, sdpa=False)
    d = config_to_hf(CFG).to_dict()
    for bad, match in (({"hidden_act": "relu"}, "GELU"), ({"position_embedding_type": "relative_key"}, "absolute"),
                       ({"is_decoder": True}, "decoder"), ({"tie_word_embeddings": False}, "tie")):
        with pytest.raises(ValueError, match=match):
            config_from_hf({**d, **bad})


# ----------------------------------------------------------------------------- the model on its own

def test_structure_init_and_parameter_count():
    torch.manual_seed(0)
    model = BERTPretraining(replace(CFG, n_embd=64, n_ff=256, n_head=4))
    assert model.mlm.decoder.weight is model.bert.tok.weight  # tied
    assert abs(model.bert.layers[0].ff.fc2.weight.std().item() - 0.02) < 0.002
    assert not model.mlm.decoder.bias.any() and not model.nsp.bias.any()
    assert torch.equal(model.bert.norm.weight, torch.ones(64)) and not model.bert.layers[1].norm2.bias.any()
    if transformers is not None:  # the same parameters as BertForPreTraining, tensor for tensor
        hf = transformers.BertForPreTraining(config_to_hf(model.cfg))
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    # load_run rebuilds Model(cfg.model) with another dropout and loads the checkpoint's state dict
    BERTPretraining(replace(model.cfg, dropout=0.0)).load_state_dict(model.state_dict())


def test_config_errors_speak_to_a_learner():
    with pytest.raises(ValueError, match="vocab_size must be set"):
        BERT(replace(CFG, vocab_size=0))
    with pytest.raises(ConfigError, match="does not divide"):
        BERT(replace(CFG, n_head=5))
    with pytest.raises(ValueError, match="longer than max_len=16"):
        ours()(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one class"):
        BERTClassifier(BERT(CFG), 0)


@pytest.mark.parametrize("sdpa", [True, False])
def test_padding_changes_no_real_token(sdpa):
    model = ours(sdpa=sdpa)
    x = torch.randint(1, V, (2, 9))
    seg = torch.tensor([[0] * 5 + [1] * 4] * 2)
    with torch.no_grad():
        h, pooled = model.bert(x, seg)
        padded = torch.cat([x, torch.full((2, 4), PAD)], 1)
        h2, pooled2 = model.bert(padded, torch.cat([seg, torch.zeros(2, 4, dtype=torch.long)], 1))
        torch.testing.assert_close(h2[:, :9], h, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled2, pooled, atol=1e-5, rtol=1e-5)
        # an explicit attention_mask hides whatever the extra positions hold, pad id or not
        junk = torch.cat([x, torch.randint(1, V, (2, 4))], 1)
        keep = torch.cat([torch.ones(2, 9), torch.zeros(2, 4)], 1).long()
        h3, _ = model.bert(junk, torch.cat([seg, torch.ones(2, 4, dtype=torch.long)], 1), attention_mask=keep)
        torch.testing.assert_close(h3[:, :9], h, atol=1e-5, rtol=1e-5)
        # the readable path and the fused one agree
        other = ours(sdpa=not sdpa)
        torch.testing.assert_close(other.bert(padded)[0], model.bert(padded)[0], atol=1e-5, rtol=1e-5)


def test_attention_maps_one_per_layer_rows_sum_to_one_pads_get_nothing():
    model, b = ours(), batch()  # sdpa=True: asking for maps switches to the hand-written path
    maps: list = []
    with torch.no_grad():
        h, _ = model.bert(b.ids, b.segments, maps=maps)
        h_fast, _ = model.bert(b.ids, b.segments)
    assert len(maps) == CFG.n_layer
    pad = b.ids == PAD
    for w in maps:
        assert w.shape == (3, CFG.n_head, 12, 12)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, CFG.n_head, 12))
        assert not w.masked_select(pad[:, None, None, :]).any()  # no query looks at a pad key
    torch.testing.assert_close(h, h_fast, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- objectives

def test_pretrain_loss_without_nsp_labels_is_the_mlm_loss():
    model = ours()
    b = batch()._replace(nsp_labels=torch.full((3,), IGNORE))
    loss = pretrain_loss(model, b)
    with torch.no_grad():
        full, _ = model(b.ids, b.segments)
    picked = b.mlm_labels != IGNORE
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(full[picked], b.mlm_labels[picked]), atol=1e-6, rtol=1e-6)
    loss.backward()
    assert model.nsp.weight.grad is None or not model.nsp.weight.grad.any()  # NSP had nothing to learn from
    # with NSP labels: the two cross-entropies added
    b2 = batch()
    _, nsp = model(b2.ids, b2.segments)
    torch.testing.assert_close(pretrain_loss(model, b2), loss + F.cross_entropy(nsp, b2.nsp_labels))


class FixedScores(nn.Module):
    """A stand-in model for the metrics: at a masked position the logit of class 0 is the input id there, the
    other classes get 0; NSP logits are (1, 0) for a pair that starts with an even id, (0, 1) otherwise."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.unused = vocab, nn.Parameter(torch.zeros(1))

    def forward(self, ids, segments=None, attention_mask=None, mlm_labels=None):
        a = ids[mlm_labels != IGNORE].float()
        mlm = torch.zeros(len(a), self.vocab)
        mlm[:, 0] = a
        even = (ids[:, 0] % 2 == 0).float()
        return mlm, torch.stack([even, 1 - even], 1)


def test_metrics_equal_a_closed_form():
    vocab = 5
    # batch 1: one masked token (input 2, label 0); batch 2: three (inputs 1, 3, 0 with labels 0, 4, 0)
    b1 = PretrainBatch(torch.tensor([[2, 7]]), torch.zeros(1, 2, dtype=torch.long),
                       torch.tensor([[0, IGNORE]]), torch.tensor([0]))
    b2 = PretrainBatch(torch.tensor([[1, 3], [0, 9]]), torch.zeros(2, 2, dtype=torch.long),
                       torch.tensor([[0, 4], [0, IGNORE]]), torch.tensor([1, IGNORE]))
    model = FixedScores(vocab).train()
    r = mlm_nsp_metrics(model, [b1, b2])
    assert model.training  # restored

    def ce(a, label):  # logits (a, 0, 0, 0, 0)
        return math.log(math.exp(a) + vocab - 1) - (a if label == 0 else 0.0)

    tokens = [(2, 0), (1, 0), (3, 4), (0, 0)]
    assert r["mlm_loss"] == pytest.approx(sum(ce(a, y) for a, y in tokens) / 4)  # token-weighted, not per batch
    assert r["mlm_acc"] == pytest.approx(3 / 4)  # class 0 always wins (ties go to the first class)
    # NSP: pair 1 starts even -> 0 (label 0, right), pair 2 odd -> 1 (label 1, right), pair 3 unlabelled
    assert r["nsp_acc"] == 1.0 and r["nsp_majority"] == 0.5
    mlm_only = mlm_nsp_metrics(model, [b._replace(nsp_labels=torch.full_like(b.nsp_labels, IGNORE)) for b in (b1, b2)])
    assert math.isnan(mlm_only["nsp_acc"]) and math.isnan(mlm_only["nsp_majority"])
    assert mlm_only["mlm_loss"] == r["mlm_loss"]


def test_metrics_of_one_batch_add_up_to_the_loss():
    model, b = ours(), batch(5)
    model.train()
    r = mlm_nsp_metrics(model, [b])
    model.eval()
    with torch.no_grad():
        _, nsp = model(b.ids, b.segments)
        loss = pretrain_loss(model, b)
    assert r["mlm_loss"] + F.cross_entropy(nsp, b.nsp_labels).item() == pytest.approx(loss.item(), rel=1e-5)
    assert r["nsp_majority"] == pytest.approx(2 / 3) and 0 <= r["mlm_acc"] <= 1
