"""Figures of word vectors: a 2-D projection of chosen word groups, and one static vector vs contextual ones.

    pca_figure(vecs, ENGLISH_GROUPS, "维基百科 CBOW")      # words of each group close together, groups apart
    contextual_rows(bert, tok, vecs.index, CONTEXT_PAIRS)   # cosines of one word's BERT states across sentences
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from llmpath.plotting import use_cjk
from llmpath.word2vec.evaluate import unit

ENGLISH_GROUPS = {
    "数字": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    "亲属": ["father", "mother", "son", "daughter", "brother", "sister", "wife", "husband", "king", "queen"],
    "地方": ["france", "germany", "italy", "spain", "england", "paris", "london", "rome", "berlin", "europe"],
}
CHINESE_GROUPS = {
    "好评词": ["好", "不错", "满意", "喜欢", "舒服", "方便", "漂亮", "值得"],
    "差评词": ["坏", "差", "失望", "垃圾", "难用", "麻烦", "后悔", "不好"],
    "数字": ["一", "两", "三", "四", "五", "十"],
}
# (word, sentence, another sentence with the same sense, a sentence with the other sense)
CONTEXT_PAIRS = [
    ("bank", "he sat on the bank of the river and watched the water", "the boat drifted toward the muddy bank of the lake",
     "she went to the bank to take out some money"),
    ("苹果", "这个苹果又甜又脆，水分很多", "我买了一斤苹果，很新鲜", "苹果手机的电池不耐用，充电太慢"),
]


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of x (centred; signs fixed so the largest entry is positive)."""
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2] * np.sign(vt[:2, np.abs(vt[:2]).argmax(1)].diagonal())[:, None]
    return x @ vt.T


def pca_figure(words: list[str], matrix: np.ndarray, index: dict[str, int], groups: dict[str, list[str]],
               title: str) -> Figure:
    """Unit vectors of the groups' words (those in the vocabulary) projected on their first two principal components."""
    use_cjk()
    shown = [(g, w) for g, ws in groups.items() for w in ws if w in index]
    fig, ax = plt.subplots(figsize=(6.4, 5))
    if len(shown) < 3:  # a tiny vocabulary: nothing to project
        ax.text(0.5, 0.5, "这些词几乎都不在词表里", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title)
        return fig
    xy = pca_2d(unit(matrix[[index[w] for _, w in shown]]))
    for k, g in enumerate(groups):
        pts = np.array([p for (gg, _), p in zip(shown, xy) if gg == g])
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=28, color=f"C{k}", label=g)
    for (g, w), (x, y) in zip(shown, xy):
        ax.annotate(w, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=9)
    missing = [w for ws in groups.values() for w in ws if w not in index]
    ax.set(title=title + (f"（不在词表：{'、'.join(missing)}）" if missing else ""), xlabel="第一主成分", ylabel="第二主成分")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@torch.no_grad()
def contextual_vector(model, tok, sentence: str, word: str) -> np.ndarray:
    """BERT's last-layer state of `word` in `sentence`, the mean over its WordPiece pieces (C,)."""
    left, found, right = sentence.partition(word)
    if not found:
        raise ValueError(f"'{word}' is not in the sentence '{sentence}'")
    a, w, b = tok.encode(left), tok.encode(word), tok.encode(right)
    ids = torch.tensor([[tok.cls_id, *a, *w, *b, tok.sep_id]])
    h, _ = model.bert(ids)  # (1, T, C)
    return h[0, 1 + len(a):1 + len(a) + len(w)].mean(0).numpy()


def contextual_rows(model, tok, static: dict[str, int], pairs=CONTEXT_PAIRS) -> list[dict]:
    """Per word: the cosine of its contextual vector in the first sentence with the one in a sentence of the same
    sense and with the one in a sentence of the other sense (a static vector gives 1 for both)."""
    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    rows = []
    for word, s1, same, other in pairs:
        v1, v_same, v_other = (contextual_vector(model, tok, s, word) for s in (s1, same, other))
        rows.append({"word": word, "sentence": s1, "same_sense": same, "other_sense": other,
                     "same_sense_cos": cos(v1, v_same), "other_sense_cos": cos(v1, v_other),
                     "static_in_vocab": word in static})
    return rows


def contextual_figure(rows: list[dict]) -> Figure:
    """Bars: one static vector (cosine 1 between any two uses) vs BERT's vectors in a same-sense and an other-sense sentence."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.27, [1.0] * len(rows), 0.27, label="静态词向量（word2vec：任意两句都是同一个向量）", color="tab:gray")
    for dx, key, label, color in ((0.0, "same_sense_cos", "BERT：同一意思的另一句", "tab:blue"),
                                  (0.27, "other_sense_cos", "BERT：另一个意思的句子", "tab:orange")):
        bars = ax.bar(x + dx, [r[key] for r in rows], 0.27, label=label, color=color)
        for b, r in zip(bars, rows):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{r[key]:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels=[f"“{r['word']}”" for r in rows])
    ax.set(ylim=(0, 1.35), ylabel="与第一句中该词向量的余弦", title="同一个词，两种意思")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
