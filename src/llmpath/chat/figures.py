"""Idea diagrams of stages 11 and 12 (no training, no data files).

Stage 11: a conversation in the chat template with its loss mask, and the same few conversations batched by padding
and by packing.

    save_fig(template_mask_figure(), "11_template_mask.png")   # token boxes: which ones the loss counts
    save_fig(packing_figure(), "11_packing.png")               # rows of (x, y): targets, -100, padding

Both draw with the library's own functions: a byte-level BPE trained on the spot (`train_gpt_tokenizer`, the
`digits` pattern of the base model), `encode_chat` for ids and mask, `collate` and `pack_rows` for the batches.

Stage 12: what one iteration of PPO, one step of DPO and one iteration of GRPO compute, the three per-sample KL
estimators, and the weights GAE gives the TD errors.

    save_fig(rlhf_loop_figure(), "12_rlhf_loop.png")           # boxes and arrows: PPO, DPO, GRPO
    save_fig(kl_estimators_figure(), "12_kl_estimators.png")   # k1, k2, k3 per sample; their mean and spread
    save_fig(gae_figure(), "12_gae.png")                       # (γλ)^l, and the advantages of one answer

The last two compute with `kl_penalty` and `gae` of llmpath.chat.objectives.
Every function returns a matplotlib Figure; docs/figures.py saves it with `llmpath.plotting.save_fig`.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch, Rectangle

from llmpath.chat.objectives import gae, kl_penalty
from llmpath.chat.sft import IGNORE, collate, pack_rows, shift
from llmpath.chat.template import PAD, SPECIAL_TOKENS, encode_chat
from llmpath.plotting import use_cjk
from llmpath.tokenizers import train_gpt_tokenizer

# One short bilingual conversation, written with the instruction templates of data.py (a chitchat system message,
# an arithmetic question, a translation request).
CONVERSATION = [
    {"role": "system", "content": "你是一个友好的聊天助手，回答简短。"},
    {"role": "user", "content": "12加30等于多少？"},
    {"role": "assistant", "content": "等于42。"},
    {"role": "user", "content": "Translate into English: 你好。"},
    {"role": "assistant", "content": "Hello."},
]
# A few single-turn examples of different lengths, for padding vs packing.
CONVERSATIONS = [
    [{"role": "user", "content": "7加5等于多少？"}, {"role": "assistant", "content": "等于12。"}],
    [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}],
    [{"role": "system", "content": "你是一个友好的聊天助手，回答简短。"}, {"role": "user", "content": "你好！"},
     {"role": "assistant", "content": "你好！今天天气很好。"}],
    [{"role": "user", "content": "Translate into English: 谢谢。"}, {"role": "assistant", "content": "Thank you."}],
    [{"role": "user", "content": "31减6等于多少？"}, {"role": "assistant", "content": "等于25。"}],
]
# The tokenizer's training text: a little of both languages, so most pieces above are whole characters or words.
CORPUS = ("你好！今天天气很好。你是一个学生，我是一个老师。7加5等于多少？等于12。谢谢你的回答，很简短。"
          "聊天助手很友好。我的回答很简短。你的朋友很友好。回答简短的助手。31减6等于多少？等于25。助手的回答很好。"
          "Hello, how are you? Translate into English: 谢谢。Thank you. Translate this sentence into Chinese. "
          "The assistant is friendly. What is 12 + 30? 42.\nsystem\nuser\nassistant\n")
VOCAB_SIZE = 420  # 256 bytes + 3 special tokens + 161 merges

ANSWER, PROMPT, PAD_COLOR = "#f4a261", "#e9ecef", "white"
ROLE_NAMES = {"system": "系统", "user": "用户", "assistant": "助手"}
PALETTE = ("#e76f51", "#2a9d8f", "#8e7dbe", "#e9c46a", "#457b9d", "#f28482")


@lru_cache(maxsize=1)
def figure_tokenizer():
    """The small byte-level BPE both diagrams use (trained in milliseconds, the same every call)."""
    return train_gpt_tokenizer(CORPUS * 8, VOCAB_SIZE, pattern="digits")


def token_label(tok, i: int) -> str:
    """A token as a box label: special tokens by name, newline as ⏎, space as ␣, a partial UTF-8 character as hex."""
    inverse = {v: k for k, v in tok.special_tokens.items()}
    if i in inverse:
        return inverse[i]
    raw = tok.decode_bytes([i])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a piece of a character (a small BPE may split one): show its bytes
        return " ".join(f"{b:02x}" for b in raw)
    return text.replace("\n", "⏎").replace(" ", "␣")


def _width(label: str) -> float:
    """Box width in data units: wide (CJK) characters count twice."""
    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in label)
    return max(0.75, 0.19 * cols + 0.35)


def template_mask_figure(messages: list[dict] | None = None, tok=None, row_width: float = 24.0) -> Figure:
    """The conversation rendered with the chat template, one token per box and one turn per row (wrapped when long):
    orange where the loss mask is 1 (each answer and its <|im_end|>), gray where it is 0; the id under each box."""
    use_cjk()
    messages = messages or CONVERSATION
    tok = tok or figure_tokenizer()
    special_ids = {tok.special_tokens[s] for s in SPECIAL_TOKENS if s in tok.special_tokens}
    # encode_chat on each prefix finds where every turn's tokens start (a turn always ends with <|im_end|> ⏎)
    ids, mask = encode_chat(tok, messages)
    bounds = [len(encode_chat(tok, messages[:k])[0]) if k else 0 for k in range(len(messages) + 1)]
    lines = []  # (role or "", [(id, mask)]), wrapped at row_width
    for k, m in enumerate(messages):
        line, used, first = [], 0.0, True
        for t in range(bounds[k], bounds[k + 1]):
            w = _width(token_label(tok, ids[t])) + 0.12
            if line and used + w > row_width:
                lines.append((m["role"] if first else "", line))
                line, used, first = [], 0.0, False
            line.append((ids[t], mask[t]))
            used += w
        lines.append((m["role"] if first else "", line))
    right = max(sum(_width(token_label(tok, i)) + 0.12 for i, _ in line) for _, line in lines)
    fig, ax = plt.subplots(figsize=(0.55 * (right + 2.5), 0.8 * len(lines) + 1.3))
    ax.set_xlim(-2.2, right + 0.3)
    ax.set_ylim(-len(lines) + 0.4, 0.45)
    ax.axis("off")
    for r, (role, line) in enumerate(lines):
        y = -r
        if role:
            ax.text(-2.1, y, ROLE_NAMES[role] + "\n" + role, ha="left", va="center", fontsize=9, color="#444444")
        x = 0.0
        for i, m in line:
            label = token_label(tok, i)
            w = _width(label)
            special = i in special_ids
            ax.add_patch(FancyBboxPatch((x + 0.04, y - 0.28), w - 0.08, 0.56, boxstyle="round,pad=0.02",
                                        fc=ANSWER if m else PROMPT, ec="black" if special else "#888888",
                                        lw=1.6 if special else 0.7))
            ax.text(x + w / 2, y, label, ha="center", va="center", fontsize=8 if special else 10)
            ax.text(x + w / 2, y - 0.4, str(i), ha="center", va="center", fontsize=6.5, color="#666666")
            x += w + 0.12
    legend = [Patch(fc=ANSWER, ec="#888888", label="mask = 1：训练目标（助手的回答与它的 <|im_end|>）"),
              Patch(fc=PROMPT, ec="#888888", label="mask = 0：只作上下文（系统与用户的话、角色头、<|im_start|>、换行）"),
              Patch(fc="white", ec="black", lw=1.6, label="特殊词元：一个 id，只有模板会写")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(0.0, -0.02), ncol=2, fontsize=9, frameon=False)
    n_answer = sum(mask)
    ax.set_title(f"ChatML 模板里的一段对话：{len(ids)} 个词元，其中 {n_answer} 个计入 SFT 损失"
                 f"（字节级 BPE，digits 切分，词表 {tok.vocab_size}；方框下是 id）", fontsize=11)
    fig.tight_layout()
    return fig


def _batch_panel(ax, title: str, x, y, owner: list[list[int]]) -> None:
    """Rows of one (x, y) batch as cells: a conversation's color, dark where y is a target, pale where it is -100,
    white and hatched where x is padding; a thick line where one conversation ends and the next begins."""
    B, T = x.shape
    for b in range(B):
        for t in range(T):
            c = owner[b][t] if t < len(owner[b]) else -1
            if c < 0:
                ax.add_patch(Rectangle((t, -b - 0.4), 1, 0.8, fc=PAD_COLOR, ec="#bbbbbb", lw=0.5, hatch="///"))
                continue
            target = int(y[b, t]) != IGNORE
            ax.add_patch(Rectangle((t, -b - 0.4), 1, 0.8, fc=PALETTE[c % len(PALETTE)], alpha=1.0 if target else 0.22,
                                   ec="white", lw=0.8))
            if target:
                ax.text(t + 0.5, -b, "•", ha="center", va="center", fontsize=7, color="white")
            if t and t < len(owner[b]) and owner[b][t - 1] != c:
                ax.plot([t, t], [-b - 0.48, -b + 0.48], color="black", lw=2)
        n_target = int((y[b] != IGNORE).sum())
        n_pad = T - len(owner[b])
        ax.text(T + 0.6, -b, f"目标 {n_target}，填充 {n_pad}", ha="left", va="center", fontsize=8)
    n_target, n_pos = int((y != IGNORE).sum()), B * T
    n_pad = n_pos - sum(len(o) for o in owner)
    ax.set_title(f"{title}：{B} 行 × {T} 个位置 = {n_pos}；目标 {n_target} 个，填充 {n_pad} 个"
                 f"（{n_pad / n_pos:.0%} 的位置白算）", fontsize=10, loc="left")
    ax.set_xlim(-0.3, T + 6)
    ax.set_ylim(-B + 0.4, 0.6)
    ax.set_yticks([-b for b in range(B)], labels=[f"第 {b} 行" for b in range(B)], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)


def packing_figure(conversations: list[list[dict]] | None = None, tok=None, block_size: int = 44) -> Figure:
    """The same conversations as one padded batch (top: `collate`, a conversation per row) and packed (bottom:
    `pack_rows` then `collate`, whole conversations laid end to end in rows of block_size + 1 tokens)."""
    use_cjk()
    conversations = conversations or CONVERSATIONS
    tok = tok or figure_tokenizer()
    pad_id = tok.special_tokens[PAD]
    encoded = [encode_chat(tok, c) for c in conversations]
    # which conversation each input position belongs to: pack_rows only concatenates, so packing lists of
    # conversation numbers the same way gives the packed rows' owners
    tags = [([k] * len(ids), mask) for k, (ids, mask) in enumerate(encoded)]
    padded_owner = [shift(*t)[0] for t in tags]
    packed_owner = [shift(*t)[0] for t in pack_rows(tags, block_size)]
    x_pad, y_pad = collate(encoded, pad_id)
    x_pack, y_pack = collate(pack_rows(encoded, block_size), pad_id)
    T = max(x_pad.shape[1], x_pack.shape[1])
    fig, (ax_pad, ax_pack) = plt.subplots(2, 1, figsize=(14, 0.62 * (len(x_pad) + len(x_pack)) + 2.6),
                                          gridspec_kw=dict(height_ratios=[len(x_pad) + 0.8, len(x_pack) + 0.8]))
    _batch_panel(ax_pad, "填充（默认）：一行一段对话，右边补 <|endoftext|>", x_pad, y_pad, padded_owner)
    _batch_panel(ax_pack, f"打包（--pack=true）：整段对话首尾相接，每行至多 block_size + 1 = {block_size + 1} 个词元",
                 x_pack, y_pack, packed_owner)
    for ax in (ax_pad, ax_pack):
        ax.set_xlim(-0.3, T + 6)
    ax_pack.set_xlabel("输入位置 t（x = ids[:-1]；每格的颜色按 y[t] = ids[t+1]：深色是目标，浅色是 -100）")
    legend = [Patch(fc=PALETTE[k % len(PALETTE)], label=f"对话 {k}") for k in range(len(conversations))]
    legend += [Patch(fc=PALETTE[0], alpha=0.22, label="浅色：y = -100（提示、角色头，不算损失）"),
               Patch(fc=PAD_COLOR, ec="#bbbbbb", hatch="///", label="填充：x = <|endoftext|>，y = -100"),
               Patch(fc="white", ec="black", lw=2, label="粗线：下一段对话从这里开始")]
    fig.legend(handles=legend, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle("同样几段对话的两种批：填充浪费位置，打包把它们填满（注意力仍是普通的因果掩码，后一段看得见前一段）",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return fig


# ------------------------------------------------------------------------------ stage 12: alignment

TRAINED, FROZEN, SIGNAL, LOSS, DATA = "#cfe3f5", "#dcdcdc", "#fde2c4", "#d8f0d2", "white"


def _node(ax, x: float, y: float, w: float, h: float, title: str, math: str = "", color: str = TRAINED,
          fontsize: float = 10) -> None:
    """A rounded box centred at (x, y): a title and, under it, a formula. mathtext has no CJK glyphs, so the Chinese
    title and the formula are two separate texts."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.06", fc=color, ec="#555555",
                                lw=1.0))
    if math:
        ax.text(x, y + 0.2 * h, title, ha="center", va="center", fontsize=fontsize)
        ax.text(x, y - 0.24 * h, math, ha="center", va="center", fontsize=fontsize)
    else:
        ax.text(x, y, title, ha="center", va="center", fontsize=fontsize)


def _flow(ax, a: tuple[float, float], b: tuple[float, float], label: str = "", rad: float = 0.0,
          color: str = "#333333", ls: str = "-", at: tuple[float, float] | None = None) -> None:
    """An arrow from a to b, with an optional label at `at` (default: just above the middle)."""
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=13, color=color, lw=1.3, ls=ls,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))
    if label:
        x, y = at or ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.35)
        ax.text(x, y, label, ha="center", va="bottom", fontsize=8.5, color=color)


def _route(ax, points: list[tuple[float, float]], label: str = "", at: tuple[float, float] | None = None,
           color: str = "#1f5fa8") -> None:
    """A path of straight segments through `points`, with an arrowhead at the last one."""
    xs, ys = zip(*points)
    ax.plot(xs[:-1], ys[:-1], color=color, lw=1.3)
    _flow(ax, points[-2], points[-1], color=color)
    if label:
        ax.text(*(at or points[1]), label, ha="center", va="bottom", fontsize=8.5, color=color)


def rlhf_loop_figure() -> Figure:
    """Three rows of boxes and arrows: one PPO iteration (sample, reward model + per-token KL to the reference, critic
    and GAE, clipped update), one DPO step (pairs, policy and reference log-probs, loss), one GRPO iteration (a group
    of G answers, an exact check, group-relative advantages, clipped update + k3 KL)."""
    use_cjk()
    fig, ax = plt.subplots(figsize=(17, 11.5))
    ax.set_xlim(0, 34)
    ax.set_ylim(-1.6, 21.6)
    ax.axis("off")
    W, H = 5.2, 1.9

    # ---- PPO: y from 13 to 21
    y = 16.4
    ax.text(0.2, 21.1, "RLHF 与 PPO：一次迭代（策略和评论家在训练；奖励模型和参考模型冻结）", fontsize=13,
            va="center")
    _node(ax, 2.3, y, 3.6, H, "提示 x\n（写一条好评……）", color=DATA)
    _node(ax, 8.2, y, W, H, "策略采样一个回答", r"$y \sim \pi_\theta(\cdot \mid x)$")
    _node(ax, 14.6, y + 2.5, W + 0.6, H, "奖励模型：整段回答一个分数", r"$r_\phi(x, y)$", color=FROZEN)
    ax.text(14.6, y + 2.5 - H / 2 - 0.12, "只加在最后一个词元上；没写 <|im_end|> 再扣 1", ha="center", va="top",
            fontsize=8.5, color="#555555")
    _node(ax, 14.6, y - 2.5, W + 0.6, H, "参考模型：每个词元的 KL 惩罚",
          r"$-\beta\,[\log\pi_\theta(y_t) - \log\pi_{\mathrm{ref}}(y_t)]$", color=FROZEN)
    _node(ax, 20.6, y, 3.4, H, "每词元奖励", r"$r_t$", color=SIGNAL)
    _node(ax, 25.6, y + 2.9, 4.6, 1.6, "评论家（价值模型）", r"$V(s_t)$")
    _node(ax, 25.6, y, 4.6, H, "GAE → 优势、回报", r"$A_t=\sum_l (\gamma\lambda)^l \delta_{t+l}$", color=SIGNAL)
    _node(ax, 31.0, y, 5.0, H + 0.5, "裁剪的替代目标\n+ 价值损失",
          r"$\min(\rho_t A_t,\ \mathrm{clip}(\rho_t, 1\pm\epsilon) A_t)$", color=LOSS)
    _flow(ax, (4.1, y), (5.6, y))
    _flow(ax, (10.8, y + 0.5), (11.6, y + 2.2))
    _flow(ax, (10.8, y - 0.5), (11.6, y - 2.2))
    _flow(ax, (17.6, y + 2.2), (18.9, y + 0.5))
    _flow(ax, (17.6, y - 2.2), (18.9, y - 0.5))
    _flow(ax, (22.3, y), (23.3, y))
    _flow(ax, (25.6, y + 2.1), (25.6, y + 0.95))
    _flow(ax, (27.9, y), (28.5, y), "白化", at=(28.2, y + 0.3))
    _route(ax, [(31.0, y - H / 2 - 0.3), (31.0, 12.35), (8.2, 12.35), (8.2, y - H / 2 - 0.08)],
           "更新策略与评论家（在同一批回答上走几轮 × 小批），然后重新采样", at=(21.5, 12.45))

    # ---- DPO: y from 6.5 to 11.5
    y = 8.9
    ax.text(0.2, 11.6, "DPO：一步（离线：偏好对是现成的，不采样，没有奖励模型和评论家）", fontsize=13,
            va="center")
    _node(ax, 2.6, y, 4.2, H, "偏好对", r"$(x,\ y_w,\ y_l)$", color=DATA)
    _node(ax, 10.0, y + 1.35, 7.2, 1.7, "策略：两个回答的对数概率",
          r"$\log\pi_\theta(y_w \mid x),\ \ \log\pi_\theta(y_l \mid x)$")
    _node(ax, 10.0, y - 1.35, 7.2, 1.7, "参考模型（冻结）：同样两个",
          r"$\log\pi_{\mathrm{ref}}(y_w \mid x),\ \ \log\pi_{\mathrm{ref}}(y_l \mid x)$", color=FROZEN)
    _node(ax, 18.6, y, 6.0, H + 0.3, "隐式奖励",
          r"$\hat r(y) = \beta \log \dfrac{\pi_\theta(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)}$", color=SIGNAL)
    _node(ax, 27.4, y, 6.8, H, "Bradley-Terry 损失", r"$-\log\sigma(\hat r(y_w) - \hat r(y_l))$", color=LOSS)
    _flow(ax, (4.7, y + 0.3), (6.4, y + 1.2))
    _flow(ax, (4.7, y - 0.3), (6.4, y - 1.2))
    _flow(ax, (13.6, y + 1.2), (15.6, y + 0.4))
    _flow(ax, (13.6, y - 1.2), (15.6, y - 0.4))
    _flow(ax, (21.6, y), (24.0, y))
    _flow(ax, (27.4, y + H / 2 + 0.1), (13.7, y + 2.05), rad=0.1, color="#1f5fa8",
          label="梯度只更新策略", at=(20.6, y + 1.55))

    # ---- GRPO: y from -1.5 to 5
    y = 1.6
    ax.text(0.2, 5.2, "GRPO：一次迭代（可验证奖励：程序判对错；没有奖励模型，也没有评论家）", fontsize=13,
            va="center")
    _node(ax, 2.5, y, 4.0, H, "提示 x\n（算术、成语接龙、情感）", color=DATA)
    _node(ax, 8.6, y, 5.4, H, "同一个提示采样 G 个回答", r"$o_1, \dots, o_G \sim \pi_\theta(\cdot \mid x)$")
    _node(ax, 14.9, y, 5.0, H, "程序检查：答对 1，正常结束 +0.1", r"$r_1, \dots, r_G$", color=SIGNAL)
    _node(ax, 21.2, y, 5.4, H, "组内相对的优势（整段回答共用）",
          r"$\hat A_i = (r_i - \mathrm{mean}(r)) / \mathrm{std}(r)$", color=SIGNAL)
    _node(ax, 28.6, y, 7.0, H + 0.3, "裁剪的替代目标 + β·k3（到参考模型）",
          r"$\min(\rho \hat A_i,\ \mathrm{clip}(\rho, 1\pm\epsilon)\hat A_i) - \beta\, k_3$", color=LOSS)
    _node(ax, 28.6, y - 2.4, 4.2, 1.1, "参考模型（冻结）", color=FROZEN)
    _flow(ax, (4.5, y), (5.9, y))
    _flow(ax, (11.3, y), (12.4, y))
    _flow(ax, (17.4, y), (18.5, y))
    _flow(ax, (23.9, y), (25.1, y))
    _flow(ax, (28.6, y - 1.85), (28.6, y - H / 2 - 0.2))
    _flow(ax, (28.6, y + H / 2 + 0.25), (8.6, y + H / 2 + 0.05), rad=0.1, color="#1f5fa8",
          label="更新策略，然后重新采样", at=(18.6, y + 2.1))
    ax.text(14.9, y - H / 2 - 0.25, "一组的回答得分全相同 → 优势全是 0 → 这一组什么也学不到", ha="center", va="top",
            fontsize=9, color="#b23a48")

    legend = [Patch(fc=TRAINED, ec="#555555", label="在训练的模型"), Patch(fc=FROZEN, ec="#555555", label="冻结的模型"),
              Patch(fc=SIGNAL, ec="#555555", label="奖励与优势（不求梯度）"),
              Patch(fc=LOSS, ec="#555555", label="损失：梯度从这里回到策略"), Patch(fc=DATA, ec="#555555", label="数据")]
    ax.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, -0.035), ncol=5, fontsize=10, frameon=False)
    fig.tight_layout()
    return fig


def _kl_family(n_tokens: int = 50, seed: int = 0, scales=None) -> dict[str, np.ndarray]:
    """Exact KL(π || π_ref) and, for k1, k2, k3, the mean and standard deviation of one sample under π, over pairs
    π_ref = softmax(z), π = softmax(z + s u) of growing s (z, u fixed normal vectors): sums weighted by π, no
    sampling."""
    scales = np.geomspace(0.02, 3.0, 40) if scales is None else scales
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_tokens, generator=g, dtype=torch.float64)
    u = torch.randn(n_tokens, generator=g, dtype=torch.float64)
    out: dict[str, list] = {"kl": []} | {f"{k}_{s}": [] for k in ("k1", "k2", "k3") for s in ("mean", "std")}
    for s in scales:
        ref_logp, logp = torch.log_softmax(z, 0), torch.log_softmax(z + float(s) * u, 0)
        p = logp.exp()
        out["kl"].append(float((p * (logp - ref_logp)).sum()))
        for k in ("k1", "k2", "k3"):
            v = kl_penalty(logp, ref_logp, k)
            mean = (p * v).sum()
            out[f"{k}_mean"].append(float(mean))
            out[f"{k}_std"].append(float(((p * (v - mean) ** 2).sum()).sqrt()))
    return {k: np.array(v) for k, v in out.items()}


def kl_estimators_figure() -> Figure:
    """Left: k1, k2, k3 of one sampled token as functions of d = log π(x) − log π_ref(x). Middle and right: over
    pairs of 50-token distributions, each estimator's mean and its per-sample standard deviation, both divided by
    the exact KL (computed with `kl_penalty` and sums weighted by π)."""
    use_cjk()
    colors = {"k1": "tab:blue", "k2": "tab:green", "k3": "tab:red"}
    names = {"k1": "k1 = d", "k2": "k2 = d²/2", "k3": "k3 = e^(−d) − 1 + d"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    d = torch.linspace(-2.5, 2.5, 401, dtype=torch.float64)
    zero = torch.zeros_like(d)
    for k in ("k1", "k2", "k3"):
        ax.plot(d.numpy(), kl_penalty(d, zero, k).numpy(), color=colors[k], lw=2, label=names[k])
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(0, color="#888888", lw=0.6, ls=":")
    ax.fill_between(d.numpy(), -2.6, 0, where=(d < 0).numpy(), color="tab:blue", alpha=0.08)
    ax.text(-2.4, -1.2, "d < 0：k1 为负\n（π_ref 比 π 更看好这个词元）", fontsize=8.5, color="tab:blue", va="center")
    ax.text(0.15, 4.6, "k3 ≥ 0：因为 ln r ≤ r − 1，\n其中 r = π_ref / π = e^(−d)", fontsize=8.5, color="tab:red",
            va="center")
    ax.set(xlim=(-2.5, 2.5), ylim=(-2.6, 6), xlabel="d = log π(x) − log π_ref(x)（x 从策略 π 采样）",
           ylabel="一个样本的估计值", title="三个估计量：每个样本的值")
    ax.legend(fontsize=9, loc="upper left")
    ax.grid(alpha=0.3)

    fam = _kl_family()
    for ax, stat, title, ylabel in ((axes[1], "mean", "均值 ÷ 真实 KL：k1、k3 无偏（恒为 1），k2 有偏", "E[k] / KL"),
                                    (axes[2], "std", "每个样本的标准差 ÷ 真实 KL：两个分布接近时 k3 小得多", "std[k] / KL")):
        for k in ("k1", "k2", "k3"):
            ax.plot(fam["kl"], fam[f"{k}_{stat}"] / fam["kl"], color=colors[k], lw=2, label=k,
                    ls="--" if (k == "k1" and stat == "mean") else "-", zorder=3 if k == "k1" else 2)
        ax.set_xscale("log")
        ax.set(xlabel="真实 KL(π ‖ π_ref)（nats，对数坐标）", ylabel=ylabel, title=title)
        ax.title.set_fontsize(10)
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[2].set_yscale("log")
    fig.suptitle("从 π 采样估计 KL(π ‖ π_ref) 的三个估计量（Schulman 2020）；中、右两图：50 个词元的分布对，"
                 "按 π 加权精确求和，不含采样误差", fontsize=11)
    fig.tight_layout()
    return fig


def gae_figure(lams=(0.0, 0.5, 0.9, 0.95, 1.0), T: int = 12) -> Figure:
    """Left: the weight (γλ)^l GAE gives the TD error l tokens ahead (γ = 1). Right: one made-up answer of T tokens,
    a small KL penalty on each and the reward model's score on the last, a made-up critic; its advantages by `gae`
    for three λ."""
    use_cjk()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.2))
    ls = np.arange(0, 31)
    for lam in lams:
        ax.plot(ls, lam ** ls, "o-", ms=3, lw=1.4, label=f"λ = {lam:g}")
    ax.set(xlabel="往后看的词元数 l", ylabel="权重 (γλ)^l", title="GAE：A_t = Σ_l (γλ)^l δ_(t+l) 给每个 TD 误差的权重（γ = 1）")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)

    t = torch.arange(T, dtype=torch.float64)
    rewards = -0.1 * 0.05 * (1 + torch.sin(1.7 * t))  # −β × a small per-token log-ratio (β = 0.1)
    rewards[-1] += 1.0  # the reward model's score, on the last token
    values = 0.35 + 0.04 * t + 0.08 * torch.cos(2.3 * t)  # a critic that roughly expects the score
    mask = torch.ones(1, T)
    x = t.numpy()
    width = 0.26
    for k, lam in enumerate((0.0, 0.95, 1.0)):
        adv, _ = gae(rewards[None], values[None], mask, gamma=1.0, lam=lam)
        bx.bar(x + (k - 1) * width, adv[0].numpy(), width, label=f"λ = {lam:g}")
    bx.plot(x, values.numpy(), "k.--", lw=1, label="评论家 V(s_t)（示意）")
    bx.axhline(0, color="black", lw=0.6)
    bx.set(xlabel="回答中的词元 t（最后一个词元拿到奖励模型的分数 1.0）", ylabel="优势 A_t",
           title="一个回答的优势：λ = 1 是“回报 − V”，λ = 0 只看一步的 δ_t，全靠评论家")
    bx.title.set_fontsize(10)
    bx.legend(fontsize=8.5, ncol=2)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    return fig
