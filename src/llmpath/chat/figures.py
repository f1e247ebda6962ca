"""Idea diagrams of stage 11 (no training, no data files): a conversation in the chat template with its loss mask,
and the same few conversations batched by padding and by packing.

    save_fig(template_mask_figure(), "11_template_mask.png")   # token boxes: which ones the loss counts
    save_fig(packing_figure(), "11_packing.png")               # rows of (x, y): targets, -100, padding

Both draw with the library's own functions: a byte-level BPE trained on the spot (`train_gpt_tokenizer`, the
`digits` pattern of the base model), `encode_chat` for ids and mask, `collate` and `pack_rows` for the batches.
Every function returns a matplotlib Figure; docs/figures.py saves it with `llmpath.plotting.save_fig`.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle

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
