"""Captioned scenes for the vision-language chapter, generated: no captioned images ship in any package.

    splits = scene_splits("digits")             # 2 mnist-5k digits side by side: "左边是 3，右边是 7"
    splits = scene_splits("digits", min_objects=3, max_objects=4)   # 3-4 digits in a 2x2 grid
    splits = scene_splits("shapes")             # 1-2 coloured shapes (Pillow): "左上有一个红色的大圆"
    tok = build_tokenizer(splits)               # closed vocabulary: characters, words, digits, punctuation
    batches = CaptionRows(splits["train"], tok, batch_size=64, langs=("zh",), tags=False)   # for llmpath.train.fit
    print(data_card(splits))

Digit scenes: mnist-5k's 5,000 images are first split into disjoint train/val/test pools of source images
(`llmpath.vit.data.split_images`, stratified; with seed 0 the test pool is stage 7's test split, so neither the
captioner nor the stage-7 classifier has seen a test digit), then each split's scenes are built only from its
own pool. The canvas is S x S (default 56) with digits scaled to S/2: two digits sit in the left and right
halves, both in the top or both in the bottom row of the 2x2 grid; three or four sit in distinct cells of the
grid. Digits sit in cells, so a ViT that reads S/2 x S/2 images (stage 7's) can read a scene
tile by tile.
Shape scenes are synthetic, so there is nothing to hold out: train, val and test are independent random draws
(their own seeds); a test scene may repeat a training scene's attributes, as in any rendered data set.

Positions, colours, sizes and shapes are stored under English keys ("top left", "red", ...); the Chinese
words are in WHERE_ZH, COLOUR_ZH, SIZE_ZH, SHAPE_ZH. Everything is a pure function of the seed.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmpath.config import ConfigError
from llmpath.data.batching import EpochBatches, pad_sequences, sequential_batches
from llmpath.vit.data import ImageSet, load_mnist_5k, split_images

CANVAS = 56  # default image side: a 2x2 grid of 28-px cells; ViT patch 7 -> 8x8 = 64 patches
KINDS = ("digits", "shapes")
LANGS = ("zh", "en")
SPLITS = ("train", "val", "test")
WHERE_ZH = {"left": "左边", "right": "右边", "top left": "左上", "top right": "右上", "bottom left": "左下",
            "bottom right": "右下"}
CELLS = ("top left", "top right", "bottom left", "bottom right")  # row by row: the reading order of captions
SHAPE_ZH = {"circle": "圆", "square": "正方形", "triangle": "三角形"}
COLOUR_ZH = {"red": "红", "green": "绿", "blue": "蓝", "yellow": "黄"}
COLOUR_RGB = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1)}
SIZE_ZH = {"big": "大", "small": "小"}
ZERO_SHOT = {"zh": "一张数字 {d} 的图片", "en": "a photo of the digit {d}"}
OBJECTS = {"digits": (2, 4), "shapes": (1, 4)}  # allowed objects per scene
DEFAULT_OBJECTS = {"digits": (2, 2), "shapes": (1, 2)}


@dataclass
class Scenes:
    images: Tensor  # (N, C, S, S) float32 in [0, 1], 0 = background; C = 1 digits, 3 shapes
    captions: dict[str, list[str]]  # {"zh": [...], "en": [...]}, one caption per image and language
    objects: list[list[dict]]  # per scene, in caption order: digits {"digit", "where", "source"} / shapes {...}
    kind: str  # "digits" | "shapes"
    pool_size: int = 0  # digits: source images in this split's pool (the data card reports it)

    def __len__(self) -> int:
        return len(self.objects)

    def subset(self, idx) -> Scenes:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return Scenes(self.images[torch.as_tensor(idx)], {k: [v[i] for i in idx] for k, v in self.captions.items()},
                      [self.objects[i] for i in idx], self.kind, self.pool_size)


# ---------------------------------------------------------------------------- captions

def _article(d: int) -> str:
    return "an" if d == 8 else "a"  # "an 8": English says "eight"


def _en_list(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def digit_caption(objects: list[dict], lang: str) -> str:
    """[{"digit": 3, "where": "left"}, {"digit": 7, "where": "right"}] -> "左边是 3，右边是 7" / "a 3 to the left of a 7"."""
    if lang == "zh":
        return "，".join(f"{WHERE_ZH[o['where']]}是 {o['digit']}" for o in objects)
    if [o["where"] for o in objects] == ["left", "right"]:
        a, b = objects[0]["digit"], objects[1]["digit"]
        return f"{_article(a)} {a} to the left of {_article(b)} {b}"
    return _en_list([f"{_article(o['digit'])} {o['digit']} at the {o['where']}" for o in objects])


def shape_caption(objects: list[dict], lang: str) -> str:
    """[{"shape": "circle", "colour": "red", "size": "big", "where": "top left"}] -> "左上有一个红色的大圆"."""
    if lang == "zh":
        return "，".join(f"{WHERE_ZH[o['where']]}有一个{COLOUR_ZH[o['colour']]}色的{SIZE_ZH[o['size']]}"
                        f"{SHAPE_ZH[o['shape']]}" for o in objects)
    return _en_list([f"a {o['size']} {o['colour']} {o['shape']} at the {o['where']}" for o in objects])


def caption(objects: list[dict], kind: str, lang: str) -> str:
    return digit_caption(objects, lang) if kind == "digits" else shape_caption(objects, lang)


_ZH_KEY = {v: k for table in (WHERE_ZH, SHAPE_ZH, COLOUR_ZH, SIZE_ZH) for k, v in table.items()}  # 左上 -> top left
_DIGIT_ZH = re.compile(r"(左边|右边|左上|右上|左下|右下)是 ?(\d)")
_DIGIT_EN_PAIR = re.compile(r"an? (\d) to the left of an? (\d)")
_DIGIT_EN_CELL = re.compile(r"an? (\d) at the (top left|top right|bottom left|bottom right)")
_SHAPE_ZH = re.compile("(左上|右上|左下|右下)有一个(红|绿|蓝|黄)色的(大|小)(圆|正方形|三角形)")
_SHAPE_EN = re.compile(r"an? (big|small) (red|green|blue|yellow) (circle|square|triangle) at the "
                       r"(top left|top right|bottom left|bottom right)")


def find_digits(text, lang: str) -> list[tuple[str, int]]:
    """Every (position key, digit) clause found anywhere in a text, in order; [] for garbage (never raises)."""
    if not isinstance(text, str):
        return []
    if lang == "zh":
        return [(_ZH_KEY[m.group(1)], int(m.group(2))) for m in _DIGIT_ZH.finditer(text)]
    hits = [(m.start(), [("left", int(m.group(1))), ("right", int(m.group(2)))]) for m in _DIGIT_EN_PAIR.finditer(text)]
    hits += [(m.start(), [(m.group(2), int(m.group(1)))]) for m in _DIGIT_EN_CELL.finditer(text)]
    return [p for _, ps in sorted(hits) for p in ps]


def _layout_ok(wheres: list[str]) -> bool:
    """Two digits left-right, or 1-4 distinct grid cells in reading order."""
    if wheres == ["left", "right"]:
        return True
    return 0 < len(wheres) and all(w in CELLS for w in wheres) and wheres == sorted(set(wheres), key=CELLS.index)


def parse_digits(text: str, lang: str) -> list[tuple[str, int]] | None:
    """"左边是 3，右边是 7" -> [("left", 3), ("right", 7)]; None unless the text is exactly a template caption."""
    pairs = find_digits(text, lang)
    if not pairs or not _layout_ok([w for w, _ in pairs]):
        return None
    objs = [{"where": w, "digit": d} for w, d in pairs]
    return pairs if digit_caption(objs, lang) == text.strip() else None


def find_shapes(text, lang: str) -> list[dict]:
    """Every shape clause found anywhere in a text, in order, as {"shape", "colour", "size", "where"}; [] for garbage."""
    if not isinstance(text, str):
        return []
    if lang == "zh":
        return [{"shape": _ZH_KEY[m.group(4)], "colour": _ZH_KEY[m.group(2)], "size": _ZH_KEY[m.group(3)],
                 "where": _ZH_KEY[m.group(1)]} for m in _SHAPE_ZH.finditer(text)]
    return [{"shape": m.group(3), "colour": m.group(2), "size": m.group(1), "where": m.group(4)}
            for m in _SHAPE_EN.finditer(text)]


def parse_shapes(text: str, lang: str) -> list[dict] | None:
    """"左上有一个红色的大圆" -> [{"shape": "circle", "colour": "red", "size": "big", "where": "top left"}]; None
    unless the text is exactly a template caption."""
    objs = find_shapes(text, lang)
    if not objs or not _layout_ok([o["where"] for o in objs]):
        return None
    return objs if shape_caption(objs, lang) == text.strip() else None


# ---------------------------------------------------------------------------- rendering

def _place(canvas: np.ndarray, patches: np.ndarray, ys: np.ndarray, xs: np.ndarray, scenes: np.ndarray) -> None:
    """canvas[scenes[i], :, ys[i]:ys[i]+h, xs[i]:xs[i]+w] = max(itself, patches[i]) for every i.

    Scenes that share an offset are written by one slice: a few hundred numpy calls instead of one per scene.
    The max only merges a patch's empty border with a neighbour's: the ink of two objects never overlaps.
    """
    h, w = patches.shape[-2:]
    key = ys * canvas.shape[-1] + xs
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
    for group in np.split(order, starts[1:]) if len(order) else []:
        y, x, b = ys[group[0]], xs[group[0]], scenes[group]
        canvas[b, :, y:y + h, x:x + w] = np.maximum(canvas[b, :, y:y + h, x:x + w], patches[group])


@lru_cache(maxsize=1)
def _mnist() -> ImageSet:
    return load_mnist_5k()  # parsing the CSV takes about a second: once per process


@lru_cache(maxsize=4)
def digit_pools(seed: int = 0) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: disjoint indices into mnist-5k (70/10/20 per class), by split_images' seeded split."""
    ds = _mnist()
    # split_images on a set whose "images" are the indices themselves: the same stratified split, telling which images
    ids = ImageSet(torch.arange(len(ds), dtype=torch.float32).view(-1, 1, 1, 1), ds.labels, ds.classes, ds.name)
    return {name: part.images.view(-1).long().numpy() for name, part in zip(SPLITS, split_images(ids, seed=seed))}


def _digit_pixels(size: int) -> tuple[np.ndarray, np.ndarray]:
    """mnist-5k as (N, S/2, S/2) numpy images (resized when the canvas is not 56) and (N,) labels."""
    ds, d = _mnist(), size // 2
    x = ds.images if d == 28 else F.interpolate(ds.images, size=(d, d), mode="bilinear", align_corners=False)
    return x[:, 0].clamp(0, 1).numpy(), ds.labels.numpy()


def _check(kind: str, size: int, lo: int, hi: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown scene kind '{kind}'; choose one of: {', '.join(KINDS)}")
    if size < 16 or size % 2:
        raise ConfigError(f"canvas size {size} is too small or odd; use an even size of at least 16 (default {CANVAS})")
    a, b = OBJECTS[kind]
    if not a <= lo <= hi <= b:
        raise ConfigError(f"{kind} scenes hold {a}-{b} objects; got min_objects={lo}, max_objects={hi}")


def _counts(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    return rng.integers(lo, hi + 1, n)


def _cells(rng: np.random.Generator, counts: np.ndarray) -> list[list[int]]:
    """For each scene, `count` distinct grid cells (0..3) in reading order."""
    order = rng.random((len(counts), 4)).argsort(1)
    return [sorted(order[i, :k].tolist()) for i, k in enumerate(counts)]


def _repeats(src: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(n,) bool: scenes whose first `count` sources repeat one (the unused columns are set apart first)."""
    used = np.where(np.arange(src.shape[1]) < counts[:, None], src, -1 - np.arange(src.shape[1]))
    s = np.sort(used, 1)
    return (s[:, 1:] == s[:, :-1]).any(1)


def make_digit_scenes(pool: np.ndarray, n: int, lo: int, hi: int, size: int, rng: np.random.Generator) -> Scenes:
    """n scenes of lo..hi digits drawn from `pool` (indices into mnist-5k); two digits side by side, more on the grid."""
    pix, labels = _digit_pixels(size)
    # no jitter: a digit fills its cell as it was written (MNIST's own centring), so a tile of the scene is an
    # mnist-5k image; stage 7's ViT, trained without shifts, misreads shifted digits (64% at +-2 px)
    d = size // 2
    counts = _counts(rng, n, lo, hi)
    src = pool[rng.integers(0, len(pool), (n, hi))]  # (n, hi): distinct within a scene, redrawn when not
    while (dup := _repeats(src, counts)).any():
        src[dup] = pool[rng.integers(0, len(pool), (int(dup.sum()), hi))]
    cells = _cells(rng, counts)
    # side by side: x = 0 or S/2 in a random row; grid: the cell's corner
    height = d * rng.integers(0, 2, n)
    ys, xs = np.zeros((n, hi), np.int64), np.zeros((n, hi), np.int64)
    objects, src_l, dig_l = [], src.tolist(), labels[src].tolist()  # Python ints: fast to read one by one
    for i, k in enumerate(counts.tolist()):
        if k == 2:
            wheres = ["left", "right"]
            ys[i, :2], xs[i, :2] = height[i], (0, d)
        else:
            wheres = [CELLS[c] for c in cells[i]]
            ys[i, :k], xs[i, :k] = [d * (c // 2) for c in cells[i]], [d * (c % 2) for c in cells[i]]
        objects.append([{"digit": g, "where": w, "source": s} for s, g, w in zip(src_l[i], dig_l[i], wheres)])
    canvas = np.zeros((n, 1, size, size), np.float32)
    for k in range(hi):
        on = np.flatnonzero(counts > k)
        _place(canvas, pix[src[on, k]][:, None], ys[on, k], xs[on, k], on)
    images = torch.from_numpy(canvas)
    caps = {lang: [digit_caption(o, lang) for o in objects] for lang in LANGS}
    return Scenes(images, caps, objects, "digits", len(pool))


SHAPE_SIDE = {"big": 0.75, "small": 0.42}  # a shape's side as a share of its cell


def _side(size: str, cell: int) -> int:
    return max(3, round(SHAPE_SIDE[size] * cell))


@lru_cache(maxsize=8)
def shape_masks(cell: int) -> dict[tuple[str, str], np.ndarray]:
    """{(shape, size): (s, s) mask in [0, 1]} for a cell of that side; drawn by Pillow at 4x and shrunk (soft edges)."""
    from PIL import Image, ImageDraw

    out = {}
    for size in SIZE_ZH:
        s = _side(size, cell)
        for shape in SHAPE_ZH:
            im = Image.new("L", (4 * s, 4 * s), 0)
            draw = ImageDraw.Draw(im)
            e = 4 * s - 1
            if shape == "circle":
                draw.ellipse([0, 0, e, e], fill=255)
            elif shape == "square":
                draw.rectangle([0, 0, e, e], fill=255)
            else:
                draw.polygon([(e / 2, 0), (e, e), (0, e)], fill=255)
            out[shape, size] = np.asarray(im.resize((s, s), Image.BOX), np.float32) / 255.0
    return out


def make_shape_scenes(n: int, lo: int, hi: int, size: int, rng: np.random.Generator) -> Scenes:
    """n scenes of lo..hi shapes (3 shapes x 4 colours x 2 sizes) in distinct cells of the 2x2 grid, jittered."""
    cell = size // 2
    masks = shape_masks(cell)
    shapes, colours, sizes = list(SHAPE_ZH), list(COLOUR_ZH), list(SIZE_ZH)
    counts = _counts(rng, n, lo, hi)
    cells = _cells(rng, counts)
    shape_i = rng.integers(0, len(shapes), (n, hi))
    colour_i = rng.integers(0, len(colours), (n, hi))
    size_i = rng.integers(0, len(sizes), (n, hi))
    u = rng.random((n, hi, 2)) * 2 - 1  # the offset from the cell's centre, as a share of the free space
    rgb = np.asarray([COLOUR_RGB[c] for c in colours], np.float32)[:, :, None, None]  # (4, 3, 1, 1)
    canvas = np.zeros((n, 3, size, size), np.float32)
    objects = [[{"shape": shapes[shape_i[i, j]], "colour": colours[colour_i[i, j]], "size": sizes[size_i[i, j]],
                 "where": CELLS[c]} for j, c in enumerate(cells[i])] for i in range(n)]
    cell_of = np.array([c + [0] * (hi - len(c)) for c in cells])  # (n, hi); padding never drawn
    for j in range(hi):
        for z, sz in enumerate(sizes):
            on = np.flatnonzero((counts > j) & (size_i[:, j] == z))
            s = _side(sz, cell)
            room = (cell - s) // 2  # a shape moves by up to half the free space of its cell, never out of it
            stamps = np.stack([masks[sh, sz] for sh in shapes])[shape_i[on, j]][:, None] * rgb[colour_i[on, j]]
            c = cell_of[on, j]
            ys = cell * (c // 2) + room + np.round(u[on, j, 0] * room).astype(np.int64)
            xs = cell * (c % 2) + room + np.round(u[on, j, 1] * room).astype(np.int64)
            _place(canvas, stamps, ys, xs, on)
    caps = {lang: [shape_caption(o, lang) for o in objects] for lang in LANGS}
    return Scenes(torch.from_numpy(canvas), caps, objects, "shapes")


def scene_splits(kind: str = "digits", n_train: int = 4000, n_val: int = 500, n_test: int = 500,
                 min_objects: int | None = None, max_objects: int | None = None, size: int = CANVAS,
                 seed: int = 0) -> dict[str, Scenes]:
    """{"train", "val", "test"} scenes. min/max_objects default to 2-2 for digits and 1-2 for shapes."""
    lo, hi = DEFAULT_OBJECTS.get(kind, (1, 1))
    lo, hi = lo if min_objects is None else min_objects, hi if max_objects is None else max_objects
    _check(kind, size, lo, hi)
    for name, n in zip(SPLITS, (n_train, n_val, n_test)):
        if n < 1:
            raise ConfigError(f"n_{name}={n}: every split needs at least one scene")
    out = {}
    for k, (name, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test))):
        rng = np.random.default_rng([seed, 13, k])  # one stream per split: changing n_test leaves train as it was
        if kind == "digits":
            out[name] = make_digit_scenes(digit_pools(seed)[name], n, lo, hi, size, rng)
        else:
            out[name] = make_shape_scenes(n, lo, hi, size, rng)
    return out


def single_digit_scenes(split: str = "test", size: int = CANVAS, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(images (N, 1, S, S), labels (N,)): every digit of that split's pool alone, centred, at the scenes' scale."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    _check("digits", size, 2, 2)
    pix, labels = _digit_pixels(size)
    pool = digit_pools(seed)[split]
    d, off = size // 2, (size - size // 2) // 2
    canvas = np.zeros((len(pool), 1, size, size), np.float32)
    canvas[:, 0, off:off + d, off:off + d] = pix[pool]
    return torch.from_numpy(canvas), torch.from_numpy(labels[pool]).long()


# ---------------------------------------------------------------------------- tokenizer

_FULL_WIDTH = set("，。、；：？！（）“”‘’《》")
_CLOSING = set(",.;:?!)")
_TOKEN = re.compile(r"[a-z]+|\d|\S")  # an English word, one digit, or any other single character


def _is_cjk(tok: str) -> bool:
    return len(tok) == 1 and ("\u3400" <= tok <= "\u9fff" or tok in _FULL_WIDTH)


def _space(a: str, b: str) -> bool:
    """Whether decode puts a space between tokens a and b: none inside Chinese, around full-width punctuation,
    before a closing mark or inside a number; one everywhere else (words, and digits next to Chinese)."""
    if (_is_cjk(a) and _is_cjk(b)) or a in _FULL_WIDTH or b in _FULL_WIDTH or b in _CLOSING or a == "(":
        return False
    return not (a.isdigit() and b.isdigit())


class CaptionTokenizer:
    """A closed vocabulary: each Chinese character, digit and punctuation mark one token, English words whole.

    tok = CaptionTokenizer.build(["左边是 3，右边是 7"]); tok.encode("左边是 3") -> 4 ids; decode gives the text back.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self, tokens: list[str]):
        self.itos = list(self.SPECIALS) + [t for t in tokens if t not in self.SPECIALS]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)
        self.vocab_size = len(self.itos)

    @staticmethod
    def tokenize(text: str) -> list[str]:
        """"a 3, 左边" -> ["a", "3", ",", "左", "边"]: English lower-cased; spaces only separate."""
        return _TOKEN.findall(text.lower())

    @classmethod
    def build(cls, texts: list[str]) -> CaptionTokenizer:
        return cls(sorted({t for text in texts for t in cls.tokenize(text)}))

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(t, self.unk_id) for t in self.tokenize(text)]

    def decode(self, ids) -> str:
        out: list[str] = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            tok = self.itos[i] if 0 <= i < self.vocab_size else "<unk>"
            if out and _space(out[-1], tok):
                out.append(" ")
            out.append(tok)
        return "".join(out)

    def state_dict(self) -> dict:
        return {"tokens": self.itos[len(self.SPECIALS):]}


def caption_tokenizer_from_state(state: dict) -> CaptionTokenizer:
    return CaptionTokenizer(list(state["tokens"]))


def build_tokenizer(splits: dict[str, Scenes], zero_shot: bool = True, words: tuple[str, ...] = ()) -> CaptionTokenizer:
    """One vocabulary for both languages: the training captions, the zero-shot prompts for the ten digits (CLIP
    reads them; zero_shot=False leaves them out) and `words` (the captioner's language tags)."""
    texts = [c for caps in splits["train"].captions.values() for c in caps]
    if zero_shot:
        texts += [t.format(d=d) for t in ZERO_SHOT.values() for d in range(10)]
    return CaptionTokenizer.build(texts + list(words))


# ---------------------------------------------------------------------------- batches, card, figure

def prompt(tok: CaptionTokenizer, lang: str, tags: bool = True) -> list[int]:
    """What a caption follows: [bos] and, for a model that writes both languages, the language tag."""
    return [tok.bos_id, tok.stoi[lang]] if tags else [tok.bos_id]


class CaptionRows(EpochBatches):
    """Shuffled (images (B, C, S, S), ids (B, T)) batches over every (scene, language) of `langs`.

    ids = [bos] tag caption [eos] (without the tag when tags=False: a model that writes one language), right-padded
    with pad_id to the longest row of the batch. images=False gives the ids alone (a caption language model).
    """

    def __init__(self, scenes: Scenes, tok: CaptionTokenizer, batch_size: int, seed: int = 0, images: bool = True,
                 langs: tuple[str, ...] = LANGS, tags: bool = True):
        if unknown := [lang for lang in langs if lang not in scenes.captions]:
            raise ConfigError(f"unknown caption language '{unknown[0]}'; choose from: {', '.join(scenes.captions)}")
        self.rows = [(i, prompt(tok, lang, tags) + tok.encode(c) + [tok.eos_id])  # encoded once, not per batch
                     for lang in langs for i, c in enumerate(scenes.captions[lang])]
        self.scenes, self.pad_id, self.with_images = scenes, tok.pad_id, images
        super().__init__(len(self.rows), batch_size, self._collate, seed)

    def _collate(self, idx: np.ndarray):
        ids = pad_sequences([self.rows[i][1] for i in idx], self.pad_id)
        if not self.with_images:
            return ids
        return self.scenes.images[torch.as_tensor([self.rows[i][0] for i in idx])], ids

    def in_order(self, batch_size: int = 256) -> list:
        """Every row once, in order, in batches (for evaluation)."""
        return [self._collate(idx) for idx in sequential_batches(len(self.rows), batch_size)]


def data_card(splits: dict[str, Scenes]) -> str:
    """A markdown table of the splits: scenes, source images, objects per scene, caption lengths."""
    train_src = {o.get("source") for objs in splits["train"].objects for o in objs} if "train" in splits else set()
    rows = ["| 划分 | 类型 | 场景数 | 每场景物体数 | 源图像（用到 / 池） | 与训练集共用的源图像 | 不同的中文描述 "
            "| 中文描述平均字符数 | 英文描述平均词数 |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, sc in splits.items():
        counts = np.bincount([len(o) for o in sc.objects], minlength=5)
        per = "，".join(f"{k} 个：{c}" for k, c in enumerate(counts) if c)
        if sc.kind == "digits":
            src = {o["source"] for objs in sc.objects for o in objs}
            used, shared = f"{len(src)} / {sc.pool_size}", ("—" if name == "train" else str(len(src & train_src)))
        else:
            used, shared = "—（合成）", "—"
        zh = np.mean([len(c.replace(" ", "")) for c in sc.captions["zh"]])
        en = np.mean([len(c.split()) for c in sc.captions["en"]])
        rows.append(f"| {name} | {sc.kind} | {len(sc)} | {per} | {used} | {shared} | {len(set(sc.captions['zh']))} "
                    f"| {zh:.1f} | {en:.1f} |")
    return "\n".join(rows)


def scenes_figure(scenes: Scenes, n: int = 8, lang: str = "zh", cols: int = 4):
    """The first n scenes with their captions (Chinese by default) as titles."""
    import matplotlib.pyplot as plt

    from llmpath.plotting import use_cjk

    use_cjk()
    n = max(1, min(n, len(scenes)))
    rows = -(-n // cols)
    titles = []
    for text in scenes.captions[lang][:n]:
        if lang == "zh":  # two clauses a line
            parts = text.split("，")
            text = "，\n".join("，".join(parts[i:i + 2]) for i in range(0, len(parts), 2))
        titles.append(text if lang == "zh" else textwrap.fill(text, 30))
    lines = max(t.count("\n") + 1 for t in titles)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, (2.7 + 0.2 * lines) * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])  # no ticks, but the frame shows where the canvas ends
        if k >= n:
            ax.axis("off")
            continue
        img = scenes.images[k]
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(titles[k], fontsize=9)
    fig.suptitle("数字场景与描述" if scenes.kind == "digits" else "图形场景与描述")
    fig.tight_layout()
    return fig
