"""Figures of stage 4: positional encoding, attention grids (layer x head), the model's structure.

    all_figures(run_folder, data)   # -> [png paths] under <run>/figures/ (docs/figures.py copies chosen ones)

Every function returns a matplotlib Figure; the caller saves it (llmpath.plotting.save_fig).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmpath.plotting import heatmap, save_fig, use_cjk
from llmpath.transformer.model import Transformer, sinusoidal_encoding

def positional_encoding_figure(max_len: int = 64, n_embd: int = 128) -> Figure:
    """Left: PE (position x dimension). Right: PE PE^T, the dot product of every pair of positions."""
    use_cjk()
    pe = sinusoidal_encoding(max_len, n_embd).numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    heatmap(pe, ax=a, cmap="RdBu_r", title=f"正弦位置编码 PE（{max_len} 个位置 × {n_embd} 维）",
            xlabel="维度 i（偶数 sin，奇数 cos；越往右频率越低）", ylabel="位置 p")
    heatmap(pe @ pe.T, ax=b, cmap="viridis", title="位置之间的点积 PE[p]·PE[q]",
            xlabel="位置 q", ylabel="位置 p")
    fig.tight_layout()
    return fig


def attention_grid(maps: Sequence[torch.Tensor], xlabels: Sequence[str], ylabels: Sequence[str], title: str,
                   row: int = 0) -> Figure:
    """One panel per (layer, head): maps[l] is (B, nh, T_q, T_k); sentence `row` of the batch."""
    use_cjk()
    L, H = len(maps), maps[0].shape[1]
    fig, axes = plt.subplots(L, H, figsize=(2.6 * H + 1, 2.6 * L + 0.8), squeeze=False)
    for l, m in enumerate(maps):
        for h in range(H):
            w = m[row, h, : len(ylabels), : len(xlabels)].detach().cpu().numpy()
            heatmap(w, xlabels, ylabels, ax=axes[l][h], colorbar=False, cmap="Greys", title=f"层 {l + 1} · 头 {h + 1}")
            axes[l][h].tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def parameter_table(model: Transformer) -> list[tuple[str, int]]:
    """(module, parameters) rows: embeddings, each encoder/decoder layer's sub-layers, final norms, head."""
    rows = [("src_embed", sum(p.numel() for p in model.src_embed.parameters())),
            ("tgt_embed（与输出层共享）" if model.cfg.tie_weights else "tgt_embed",
             sum(p.numel() for p in model.tgt_embed.parameters()))]
    for stack in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, stack).layers):
            for name, child in layer.named_children():
                n = sum(p.numel() for p in child.parameters())
                if n:
                    rows.append((f"{stack}.layers.{i}.{name}", n))
        rows.append((f"{stack}.norm", sum(p.numel() for p in getattr(model, stack).norm.parameters())))
    rows.append(("head", 0 if model.cfg.tie_weights else model.head.weight.numel()))
    return rows


def parameter_markdown(model: Transformer) -> str:
    rows = parameter_table(model)
    total = sum(p.numel() for p in model.parameters())
    return "\n".join(["| 模块 | 参数量 |", "|---|---:|"] + [f"| `{n}` | {k:,} |" for n, k in rows] + [f"| **合计** | {total:,} |"])


def structure_figure(model: Transformer) -> Figure:
    """A block diagram of the encoder-decoder drawn with boxes and arrows, parameter counts beside."""
    use_cjk()
    c = model.cfg
    fig, ax = plt.subplots(figsize=(9, 7.5))
    ax.set_xlim(0, 10), ax.set_ylim(0, 12), ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="black", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="->", mutation_scale=12, lw=1))

    n = {name: k for name, k in parameter_table(model)}
    enc_layer = sum(v for k, v in n.items() if k.startswith("encoder.layers.0."))
    dec_layer = sum(v for k, v in n.items() if k.startswith("decoder.layers.0."))
    norm = "子层 → 加残差 → LayerNorm" if c.norm == "post" else "LayerNorm → 子层 → 加残差"
    # encoder column
    pos = {"sinusoidal": "正弦", "learned": "可学习的", "none": "无"}[c.pos]
    box(0.5, 0.5, 3.5, 0.8, f"源句词元（中文按字）\n嵌入 × √{c.n_embd} + {pos}位置编码", "#dde8f5")
    box(0.5, 2.2, 3.5, 3.6, "", "#f4f4f4")
    ax.text(2.25, 5.5, f"编码器层 × {c.enc_depth}（每层 {enc_layer:,} 参数）", ha="center", fontsize=9)
    box(0.8, 2.5, 2.9, 0.8, f"多头自注意力（{c.n_head} 头）\n{norm}", "#fbe3c8")
    box(0.8, 3.9, 2.9, 0.8, f"前馈 {c.n_embd}→{c.n_ff}→{c.n_embd}\n{norm}", "#d9efd9")
    box(0.5, 6.4, 3.5, 0.6, "LayerNorm → memory", "#eeeeee")
    for a, b in ((1.3, 2.2), (3.3, 3.9), (4.7, 6.4)):
        arrow(2.25, a, 2.25, b)
    # decoder column
    box(5.5, 0.5, 4, 0.8, f"目标词元（右移一位）\n嵌入 × √{c.n_embd} + {pos}位置编码", "#dde8f5")
    box(5.5, 2.2, 4, 5.0, "", "#f4f4f4")
    ax.text(7.5, 6.9, f"解码器层 × {c.dec_depth}（每层 {dec_layer:,} 参数）", ha="center", fontsize=9)
    box(5.8, 2.5, 3.4, 0.8, f"带因果掩码的自注意力\n{norm}", "#fbe3c8")
    box(5.8, 3.9, 3.4, 0.8, f"交叉注意力（K、V 来自 memory）\n{norm}", "#f5d0d0")
    box(5.8, 5.3, 3.4, 0.8, f"前馈 {c.n_embd}→{c.n_ff}→{c.n_embd}\n{norm}", "#d9efd9")
    box(5.5, 7.8, 4, 0.6, "LayerNorm", "#eeeeee")
    tied = "（权重与目标嵌入共享）" if c.tie_weights else ""
    box(5.5, 9.0, 4, 0.8, f"线性层 → softmax{tied}\n下一个词的概率", "#e6dcf2")
    for a, b in ((1.3, 2.2), (3.3, 3.9), (4.7, 5.3), (6.1, 7.8), (8.4, 9.0)):
        arrow(7.5, a, 7.5, b)
    arrow(4.0, 6.7, 5.8, 4.3)  # memory -> cross-attention
    total = sum(p.numel() for p in model.parameters())
    ax.text(5, 11.2, f"Transformer 编码器-解码器：{total:,} 个参数（d_model={c.n_embd}, {c.n_head} 头, "
                     f"{c.norm}-LN）", ha="center", fontsize=11)
    return fig


def pick_sentence(examples: Sequence, hyps: Sequence[str], tgt_lang: str) -> int:
    """Index of the sentence to draw: the first whose translation equals its reference word for word (the
    reference's own tokenization, so case and spacing do not count), else the best sentence BLEU (first on ties).

    pick_sentence([Example("好。", "Good.", ["好", "。"], ["good", "."])], ["good ."], "en") -> 0
    """
    from sacrebleu.metrics import BLEU

    from llmpath.seq2seq.data import TOKENIZE

    if not examples or len(examples) != len(hyps):
        raise ValueError(f"need one translation per sentence, got {len(hyps)} for {len(examples)}")
    tokenize = TOKENIZE[tgt_lang]
    for i, (e, h) in enumerate(zip(examples, hyps)):
        if tokenize(h) == e.tgt_tokens:
            return i
    metric = BLEU(tokenize="zh" if tgt_lang == "zh" else "13a", lowercase=tgt_lang == "en", effective_order=True)
    bleus = [metric.sentence_score(h, [e.tgt_text]).score for e, h in zip(examples, hyps)]
    return bleus.index(max(bleus))


def all_figures(run: Path, data) -> list[Path]:
    """PE figure, attention grids of one test sentence of `data`, structure diagram: into <run>/figures/.

    The sentence is a short one (5-9 source tokens) that the model translates correctly (`pick_sentence`),
    so the maps show attention at work rather than a model's mistake.
    """
    from llmpath.runs import load_run
    from llmpath.seq2seq.translation import translate_examples
    from llmpath.transformer.decode import greedy

    model, vocab, cfg = load_run(run)
    figs = run / "figures"
    paths = [save_fig(positional_encoding_figure(64, cfg.model.n_embd), figs / "positional_encoding.png")]
    short = [e for e in data.test if 5 <= len(e.src_tokens) <= 9]
    hyps, _ = translate_examples(model, lambda m, src, src_len, beam, lp, max_len: greedy(m, src, max_len),
                                 short, vocab, max_len=cfg.max_len)
    e = short[pick_sentence(short, hyps, vocab.tgt_lang)]
    src = torch.tensor([vocab.src_vocab.encode(e.src_tokens)])
    out = vocab.tgt_vocab.decode(greedy(model, src, cfg.max_len).tokens[0])
    tgt_in = torch.tensor([[1] + vocab.tgt_vocab.encode(out)])
    maps = model.attention_maps(src, tgt_in)
    ys = ["<bos>"] + out
    paths.append(save_fig(attention_grid(maps["encoder"], e.src_tokens, e.src_tokens,
                                         f"编码器自注意力：{e.src_text}"), figs / "attn_encoder.png"))
    paths.append(save_fig(attention_grid(maps["self"], ys, ys, "解码器带掩码自注意力（只看左边）"), figs / "attn_decoder_self.png"))
    paths.append(save_fig(attention_grid(maps["cross"], e.src_tokens, ys,
                                         f"交叉注意力：{e.src_text} → {' '.join(out)}"), figs / "attn_cross.png"))
    paths.append(save_fig(structure_figure(model), figs / "structure.png"))
    (run / "parameters.md").write_text(parameter_markdown(model) + "\n", encoding="utf-8")
    return paths
