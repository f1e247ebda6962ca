"""Stage 13's data: scenes built only from their split's own digit images, deterministic by seed, drawn where the
captions say; captions that parse back to their objects; the caption tokenizer's round trip; batches; the data
card; and caption scores on hand-made examples (worked out by hand below), garbage included."""

from collections import defaultdict

import numpy as np
import pytest
import torch

from llmpath.config import ConfigError
from llmpath.vit.data import load_mnist_5k, split_images
from llmpath.vlm.data import (CANVAS, CELLS, COLOUR_RGB, LANGS, ZERO_SHOT, CaptionRows, CaptionTokenizer, Scenes,
                              build_tokenizer, caption_tokenizer_from_state, data_card, digit_caption, digit_pools,
                              parse_digits, parse_shapes, scene_splits, scenes_figure, shape_caption,
                              single_digit_scenes)
from llmpath.vlm.metrics import caption_scores

SMALL = dict(n_train=300, n_val=40, n_test=60)


@pytest.fixture(scope="module")
def two():
    return scene_splits("digits", **SMALL)


@pytest.fixture(scope="module")
def grid():
    return scene_splits("digits", min_objects=3, max_objects=4, **SMALL)


@pytest.fixture(scope="module")
def shapes():
    return scene_splits("shapes", **SMALL)


def sources(sc: Scenes) -> set[int]:
    return {o["source"] for objs in sc.objects for o in objs}


# ------------------------------------------------------------------------------ splits

def test_pools_are_disjoint_and_the_test_pool_is_stage_7s_test_split():
    pools = digit_pools(0)
    assert [len(pools[k]) for k in ("train", "val", "test")] == [3500, 500, 1000]
    assert len(set(np.concatenate(list(pools.values())))) == 5000  # disjoint and covering
    ds = load_mnist_5k()
    _, _, test = split_images(ds, seed=0)  # the split the stage-7 classifier was tested on
    assert torch.equal(ds.images[torch.as_tensor(pools["test"])], test.images)
    assert not set(digit_pools(1)["test"].tolist()) == set(pools["test"].tolist())


@pytest.mark.parametrize("splits", ["two", "grid"])
def test_no_test_digit_image_is_seen_in_training(splits, request):
    sp = request.getfixturevalue(splits)
    pools = digit_pools(0)
    for name, sc in sp.items():
        assert sources(sc) <= set(pools[name].tolist())
    assert not sources(sp["test"]) & sources(sp["train"]) and not sources(sp["val"]) & sources(sp["train"])
    assert "| test | digits | 60 |" in data_card(sp) and data_card(sp).splitlines()[-1].split("|")[6].strip() == "0"


def test_scenes_are_fixed_by_the_seed(two, shapes):
    again = scene_splits("digits", **SMALL)
    assert torch.equal(again["train"].images, two["train"].images) and again["test"].captions == two["test"].captions
    other = scene_splits("digits", seed=1, **SMALL)
    assert not torch.equal(other["train"].images, two["train"].images)
    assert torch.equal(scene_splits("shapes", **SMALL)["val"].images, shapes["val"].images)
    assert not torch.equal(shapes["train"].images[:40], shapes["val"].images)  # splits are different draws


def test_images_shapes_ranges_and_counts(two, grid, shapes):
    assert two["train"].images.shape == (300, 1, CANVAS, CANVAS) and two["train"].images.dtype == torch.float32
    assert shapes["train"].images.shape == (300, 3, CANVAS, CANVAS)
    for sc in (two["train"], grid["train"], shapes["train"]):
        assert 0 <= float(sc.images.min()) and float(sc.images.max()) <= 1
    assert {len(o) for o in two["train"].objects} == {2} and {len(o) for o in grid["train"].objects} == {3, 4}
    assert {len(o) for o in shapes["train"].objects} == {1, 2}
    assert scene_splits("digits", size=40, **SMALL)["val"].images.shape == (40, 1, 40, 40)


def test_each_digit_is_drawn_where_its_caption_says(two, grid):
    """The ink of a region equals the ink of the source image placed there (jitter only moves empty border)."""
    ds = load_mnist_5k()
    mnist = ds.images[:, 0]
    half = CANVAS // 2
    rel = []
    for sc in (two["train"], grid["train"]):
        for img, objs in zip(sc.images[:, 0], sc.objects):
            regions = {"left": img[:, :half], "right": img[:, half:], "top left": img[:half, :half],
                       "top right": img[:half, half:], "bottom left": img[half:, :half], "bottom right": img[half:, half:]}
            for o in objs:
                ink = float(mnist[o["source"]].sum())
                rel.append(abs(float(regions[o["where"]].sum()) - ink) / ink)
                assert ds.labels[o["source"]] == o["digit"]
            empty = set(CELLS) - {o["where"] for o in objs} if objs[0]["where"] in CELLS else set()
            assert all(float(regions[w].sum()) < 8.0 for w in empty)  # a digit has ~100: at most a neighbour's jittered edge
    assert np.mean(rel) < 0.01 and np.max(rel) < 0.1


def test_shapes_have_their_colour_size_and_cell(shapes):
    half = CANVAS // 2
    area = defaultdict(list)
    for img, objs in zip(shapes["train"].images, shapes["train"].objects):
        for w in CELLS:
            r, c = CELLS.index(w) // 2, CELLS.index(w) % 2
            cell = img[:, r * half:(r + 1) * half, c * half:(c + 1) * half]  # (3, h, w)
            here = [o for o in objs if o["where"] == w]
            if not here:
                assert float(cell.sum()) == 0
                continue
            o = here[0]
            solid = cell.amax(0) > 0.5
            rgb = cell[:, solid].mean(1)
            assert torch.allclose(rgb, torch.tensor(COLOUR_RGB[o["colour"]]), atol=0.05)
            area[o["shape"], o["size"]].append(int(solid.sum()))
    for shape in ("circle", "square", "triangle"):
        assert min(area[shape, "big"]) > 2 * max(area[shape, "small"])


def test_single_digit_scenes():
    x, y = single_digit_scenes("test")
    pool = digit_pools(0)["test"]
    ds = load_mnist_5k()
    assert x.shape == (1000, 1, CANVAS, CANVAS) and torch.equal(y, ds.labels[torch.as_tensor(pool)])
    assert torch.allclose(x.sum((1, 2, 3)), ds.images[torch.as_tensor(pool)].sum((1, 2, 3)))
    assert float(x[:, :, :14].sum() + x[:, :, -14:].sum()) == 0  # centred: the top and bottom quarters are empty


# ---------------------------------------------------------------------------- captions

def test_caption_templates():
    objs = [{"digit": 3, "where": "left"}, {"digit": 7, "where": "right"}]
    assert digit_caption(objs, "zh") == "左边是 3，右边是 7" and digit_caption(objs, "en") == "a 3 to the left of a 7"
    objs = [{"digit": 3, "where": "top left"}, {"digit": 7, "where": "top right"}, {"digit": 1, "where": "bottom left"}]
    assert digit_caption(objs, "zh") == "左上是 3，右上是 7，左下是 1"
    assert digit_caption(objs, "en") == "a 3 at the top left, a 7 at the top right and a 1 at the bottom left"
    assert digit_caption([{"digit": 8, "where": "left"}, {"digit": 1, "where": "right"}], "en") == \
        "an 8 to the left of a 1"
    big = {"shape": "circle", "colour": "red", "size": "big", "where": "top left"}
    assert shape_caption([big], "zh") == "左上有一个红色的大圆" and shape_caption([big], "en") == "a big red circle at the top left"


@pytest.mark.parametrize("splits", ["two", "grid", "shapes"])
def test_every_caption_parses_back_to_its_objects(splits, request):
    for sc in request.getfixturevalue(splits).values():
        for lang in LANGS:
            for text, objs in zip(sc.captions[lang], sc.objects):
                if sc.kind == "digits":
                    assert parse_digits(text, lang) == [(o["where"], o["digit"]) for o in objs]
                else:
                    assert parse_shapes(text, lang) == objs


@pytest.mark.parametrize("text", ["", "左边是", "左边是 3，右边是 7，", "左边是 3，左边是 7", "右上是 3，左上是 4",
                                  "a 3 to the left", "<unk> <unk>", "左边是 3，右边是 7 左边是 1", "右边是 7，左边是 3",
                                  "左上有一个红色的大圆，左上有一个红色的大圆", None, "左上有一个紫色的大圆"])
def test_garbage_does_not_parse(text):
    for lang in LANGS:
        assert parse_digits(text, lang) is None and parse_shapes(text, lang) is None


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_on_every_caption(two, grid, shapes):
    texts = [c for sp in (two, grid, shapes) for sc in sp.values() for lang in LANGS for c in sc.captions[lang]]
    texts += [t.format(d=d) for t in ZERO_SHOT.values() for d in range(10)]
    tok = CaptionTokenizer.build(texts)
    for prompt in ZERO_SHOT.values():  # the chapter's vocabulary holds the zero-shot prompts too
        assert build_tokenizer(two).unk_id not in build_tokenizer(two).encode(prompt.format(d=7))
    for t in texts:
        ids = tok.encode(t)
        assert tok.unk_id not in ids and tok.decode(ids) == t
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert [tok.itos[i] for i in tok.encode("左边是 3，右边是 7")] == list("左边是3，右边是7")
    assert [tok.itos[i] for i in tok.encode("An 8 at the top left, a")] == ["an", "8", "at", "the", "top", "left", ",", "a"]
    again = caption_tokenizer_from_state(tok.state_dict())
    assert again.itos == tok.itos and again.vocab_size == tok.vocab_size


def test_tokenizer_specials_and_unknowns():
    tok = CaptionTokenizer.build(["左边是 3，右边是 7", "a 3 to the left of a 7"])
    ids = tok.encode("左边是 9")
    assert ids[-1] == tok.unk_id and tok.decode(ids) == "左边是 <unk>"
    seq = [tok.bos_id, *tok.encode("左边是 3"), tok.eos_id, *tok.encode("右边"), tok.pad_id]
    assert tok.decode(seq) == "左边是 3" and tok.decode([tok.pad_id, *tok.encode("a 7"), tok.pad_id]) == "a 7"
    assert tok.decode([10_000, -1]) == "<unk> <unk>"  # ids out of range (an untrained model) do not raise


# ----------------------------------------------------------------------- batches, card, figure

def test_caption_rows_of_one_language(two):
    tok = build_tokenizer(two)
    for lang, length in (("zh", 9), ("en", 8)):
        batches = CaptionRows(two["train"], tok, 16, seed=3, langs=(lang,), tags=False)
        x, ids = batches(0)
        assert x.shape == (16, 1, CANVAS, CANVAS) and ids.shape == (16, length + 2) and ids.dtype == torch.long
        assert (ids[:, 0] == tok.bos_id).all() and (ids[:, -1] == tok.eos_id).all()
        idx = batches.indices(0)  # one language: row i is scene i
        assert torch.equal(x, two["train"].images[torch.as_tensor(idx)])
        assert tok.decode(ids[0].tolist()) == two["train"].captions[lang][idx[0]]
        again = CaptionRows(two["train"], tok, 16, seed=3, langs=(lang,), tags=False)
        assert torch.equal(batches(5)[1], again(5)[1])
    with pytest.raises(ConfigError, match="unknown caption language 'fr'"):
        CaptionRows(two["train"], tok, 16, langs=("fr",))


def test_padding_of_captions_of_different_lengths(grid):
    tok = build_tokenizer(grid)
    x, ids = CaptionRows(grid["train"], tok, 64, langs=("en",), tags=False)(0)
    lengths = (ids != tok.pad_id).sum(1)
    assert ids.shape[1] == int(lengths.max()) and int(lengths.min()) < int(lengths.max())
    for row, n in zip(ids, lengths):
        assert row[n - 1] == tok.eos_id and (row[n:] == tok.pad_id).all() and (row[:n] != tok.pad_id).all()


def test_data_card_rows(two, shapes):
    card = data_card(two).splitlines()
    assert len(card) == 2 + 3 and card[0].startswith("| 划分 |")
    assert "| train | digits | 300 | 2 个：300 |" in card[2] and "/ 3500" in card[2] and "/ 1000" in card[4]
    card = data_card(shapes).splitlines()
    assert len(card) == 5 and "| val | shapes | 40 |" in card[3]


def test_scenes_figure(shapes):
    fig = scenes_figure(shapes["train"], n=6)
    titles = [ax.get_title().replace("\n", "") for ax in fig.axes if ax.get_title()]
    assert titles == shapes["train"].captions["zh"][:6]
    assert len(fig.axes) == 8


def test_bad_inputs_are_refused():
    for kw in (dict(kind="faces"), dict(min_objects=1), dict(max_objects=5), dict(size=15), dict(n_test=0),
               dict(kind="shapes", max_objects=5)):
        with pytest.raises(ConfigError):
            scene_splits(**kw)
    with pytest.raises(ConfigError):
        single_digit_scenes("dev")
    with pytest.raises(ConfigError):
        caption_scores(["a"], ["a 3 to the left of a 7"], "fr")
    with pytest.raises(ValueError):
        caption_scores(["a", "b"], ["a 3 to the left of a 7"], "en")


# ----------------------------------------------------------------------------- metrics

def test_digit_scores_by_hand():
    refs = ["左边是 3，右边是 7", "左边是 1，右边是 2", "左边是 5，右边是 5"]
    hyps = ["左边是 3，右边是 7", "右边是 2，左边是 1", "乱七八糟"]
    s = caption_scores(hyps, refs, "zh")
    # exact: 1 of 3. digits in reading order: 3 7 | 2 1 vs 1 2 | none: 2 of 6.
    # (position, digit) pairs in any order: 2 | 2 | 0: 4 of 6.
    assert s["exact_match"] == pytest.approx(1 / 3) and s["digit_acc"] == pytest.approx(2 / 6)
    assert s["position_acc"] == pytest.approx(4 / 6) and s["n"] == 3
    refs = ["a 3 to the left of a 7", "an 8 at the top left, a 1 at the top right and a 2 at the bottom left"]
    hyps = ["a 7 to the left of a 3", "an 8 at the top left, a 2 at the top right and a 1 at the bottom right"]
    s = caption_scores(hyps, refs, "en")
    # digits: 7 3 vs 3 7 -> 0; 8 2 1 vs 8 1 2 -> 1. pairs: none | (top left, 8) only. 1 of 5 each.
    assert s["exact_match"] == 0 and s["digit_acc"] == pytest.approx(1 / 5) and s["position_acc"] == pytest.approx(1 / 5)
    assert 0 < s["bleu"] < 100 and 0 < s["chrf"] < 100
    s = caption_scores(refs, refs, "en")
    assert s["exact_match"] == s["digit_acc"] == s["position_acc"] == 1
    assert s["bleu"] == pytest.approx(100) and s["chrf"] == pytest.approx(100)


def test_shape_scores_by_hand():
    refs = ["左上有一个红色的大圆，右下有一个蓝色的小三角形", "右上有一个绿色的小正方形"]
    hyps = ["左上有一个红色的小圆", "左下有一个绿色的小圆"]
    s = caption_scores(hyps, refs, "zh")
    # 3 reference shapes. 1st: shape, colour, where right, size wrong; 2nd: missing; 3rd: colour and size right.
    assert s["exact_match"] == 0 and s["shape_acc"] == pytest.approx(1 / 3) and s["colour_acc"] == pytest.approx(2 / 3)
    assert s["size_acc"] == pytest.approx(1 / 3) and s["where_acc"] == pytest.approx(1 / 3)
    assert s["attribute_acc"] == pytest.approx(5 / 12)
    en = caption_scores(["a big red circle at the top left"], ["a big red circle at the top left"], "en")
    assert en["exact_match"] == en["attribute_acc"] == 1


@pytest.mark.parametrize("lang", LANGS)
def test_garbage_scores_zero_without_error(lang, two, shapes):
    for sc in (two["test"], shapes["test"]):
        refs = sc.captions[lang][:4]
        s = caption_scores(["", "###", "？？", None], refs, lang)
        assert all(v == 0 for k, v in s.items() if k != "n"), s
        s = caption_scores(["<unk> <unk>"] * 4, refs, lang)  # shares a letter or two with "an 8" or "green"
        assert all(v == 0 for k, v in s.items() if k not in ("n", "chrf")) and s["chrf"] < 1, s
