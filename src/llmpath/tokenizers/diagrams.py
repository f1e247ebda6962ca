"""Idea diagram of chapter 5a: BPE merges step by step on a few words, computed with get_stats and merge.

    merge_steps(WORDS, 6)   # each step: the pair counts, the chosen pair, the new token, the words after it
    merge_figure()          # those steps drawn
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from llmpath.plotting import plt, use_cjk
from llmpath.tokenizers.bpe import get_stats, merge

# word -> how often it occurs in the (imaginary) corpus; the counts weigh the pairs, as in train_from_counts
WORDS = {"play": 3, "played": 2, "playing": 2, "stay": 2, "stayed": 1}


def merge_steps(words: dict[str, int], n_merges: int) -> list[dict]:
    """train_naive's loop on weighted words, each step kept. The merges equal train_from_counts(words, n_merges).

    A step: stats (pair -> weighted count before the merge), pair, id, token (its bytes), words (each word's
    token bytes after the merge)."""
    ids = [list(w.encode("utf-8")) for w in words]
    freqs = list(words.values())
    vocab = {i: bytes([i]) for i in range(256)}
    steps = []
    for k in range(n_merges):
        stats: dict = {}
        for w, f in zip(ids, freqs):
            for pair, c in get_stats(w).items():
                stats[pair] = stats.get(pair, 0) + c * f
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))  # most frequent; ties -> smallest pair
        idx = 256 + k
        vocab[idx] = vocab[pair[0]] + vocab[pair[1]]
        ids = [merge(w, pair, idx) for w in ids]
        steps.append({"stats": stats, "pair": pair, "id": idx, "token": vocab[idx],
                      "words": [[vocab[i] for i in w] for w in ids], "vocab": dict(vocab)})
    return steps


def _tok_w(t: bytes) -> float:
    return 0.2 * len(t) + 0.14  # a token's box width (inches), by its length in characters


def merge_figure(words: dict[str, int] | None = None, n_merges: int = 6, top: int = 3) -> Figure:
    """One row per merge: the most frequent pairs (the chosen one in red), the new token, the words cut into
    tokens after it (the new token shaded)."""
    use_cjk()
    words = words or WORDS
    steps = merge_steps(words, n_merges)
    rows = len(steps) + 1
    row_h, box_h, pad = 0.95, 0.46, 0.03
    x_new, x_words = 1.3 * top + 0.3, 1.3 * top + 3.3
    # every word gets a column as wide as its bytes (the widest it ever is)
    cols, x = [], x_words
    for w in words:
        cols.append(x)
        x += sum(_tok_w(bytes([b])) + pad for b in w.encode("utf-8")) + 0.35
    width = x + 0.1
    fig, ax = plt.subplots(figsize=(width, 1.1 + rows * row_h))
    ax.set_xlim(0, width), ax.set_ylim(-0.1, rows * row_h + 1.0), ax.axis("off")
    red, orange = "#c0392b", "#f5b041"

    def word_row(y, cut: list[list[bytes]], new: bytes | None):
        for x, toks in zip(cols, cut):
            for t in toks:
                w = _tok_w(t)
                ax.add_patch(FancyBboxPatch((x, y - box_h / 2), w, box_h, boxstyle="round,pad=0.02",
                                            fc=orange if t == new else "#eef3fb", ec="black", lw=0.8))
                ax.text(x + w / 2, y, t.decode("utf-8"), ha="center", va="center", fontsize=10, family="monospace")
                x += w + pad

    top_y = rows * row_h + 0.35
    ax.text(0.1, top_y, "这一步各相邻对的加权次数（前几名）", fontsize=11, va="center")
    ax.text(x_new, top_y, "合并成的新词元", fontsize=11, va="center")
    for x, (w, c), nxt in zip(cols, words.items(), cols[1:] + [width + 0.25]):
        ax.text((x + nxt - 0.35) / 2, top_y, f"{w} ×{c}", ha="center", va="center", fontsize=10.5)
    y = (rows - 1) * row_h + 0.4
    ax.text(0.1, y, "开始：每个字节是一个词元（id 0–255）", fontsize=10, va="center")
    word_row(y, [[bytes([b]) for b in w.encode("utf-8")] for w in words], None)
    for k, s in enumerate(steps, 1):
        y = (rows - 1 - k) * row_h + 0.4
        vocab = s["vocab"]
        ranked = sorted(s["stats"], key=lambda p: (-s["stats"][p], p))[:top]
        ax.text(0.1, y + 0.2, f"第 {k} 步", fontsize=10, va="center")
        for j, (l, r) in enumerate(ranked):
            ax.text(0.1 + 1.3 * j, y - 0.18, f"{vocab[l].decode()}+{vocab[r].decode()}: {s['stats'][(l, r)]}",
                    fontsize=10, va="center", family="monospace", color=red if j == 0 else "#555555",
                    weight="bold" if j == 0 else "normal")
        a, b = s["pair"]
        ax.text(x_new, y, f"{vocab[a].decode()} + {vocab[b].decode()} → “{s['token'].decode()}”（id {s['id']}）",
                fontsize=10, va="center")
        word_row(y, s["words"], s["token"])
    ax.text(width / 2, rows * row_h + 0.85,
            "BPE 一步一步地合并：每步数出加权次数最多的相邻对（平局取 id 较小的一对），把它合成一个新词元",
            ha="center", va="center", fontsize=13)
    return fig
