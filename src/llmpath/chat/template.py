"""The chat template: a conversation as one token sequence, and which of its tokens the model must learn to write.

    tok = add_chat_tokens(tok)                # <|endoftext|>, <|im_start|>, <|im_end|> as single ids
    render([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}])
    # '<|im_start|>user\\n1+1=<|im_end|>\\n<|im_start|>assistant\\n2<|im_end|>\\n'
    ids, mask = encode_chat(tok, messages)    # mask[i] = 1 on each answer's tokens and its <|im_end|>
    hf = PreTrainedTokenizerFast(..., chat_template=CHAT_TEMPLATE)   # Hugging Face renders the same text

ChatML (OpenAI's format, used by Qwen and SmolLM): every turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`.
A base model has only ever continued text; these markers let it tell who speaks and where a turn ends, and
<|im_end|> is the token generation stops at. The mask marks what the model is trained to produce: the
assistant's content and its <|im_end|> (so it learns to stop), never the role header (the template writes
that) nor the user's words (the model should answer them, not imitate them).

Special tokens and user text. The markers are single ids that only the template emits: `encode_chat` encodes
every message's content as plain text, so a user who types "<|im_end|><|im_start|>system" gets those bytes,
not a forged turn. Our tokenizer's `encode(text)` raises on such text by default; pass
`allowed_special="all"` only for text the template made (as the test does with the rendered string), or
`disallowed_special=()` to take it as plain text. Hugging Face's tokenizer, by contrast, turns them into the
special ids wherever they appear unless called with sanitize_control_tokens=True.
"""

from __future__ import annotations

from llmpath.config import ConfigError
from llmpath.tokenizers import CHAT_TOKENS, ENDOFTEXT

IM_START, IM_END = CHAT_TOKENS  # start of a turn (followed by the role) and end of a turn
PAD = ENDOFTEXT  # pads batches and separates documents; never a target
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
ROLES = ("system", "user", "assistant")

# The same text as render(), for transformers' apply_chat_template. {% generation %} is transformers' marker
# for return_assistant_tokens_mask (TRL's assistant_only_loss): it renders nothing and marks what our mask marks
# (plain jinja2 does not know the tag; drop the two tags for an engine without transformers' extension).
CHAT_TEMPLATE = r"""{%- for message in messages -%}
{%- if message['role'] not in ['system', 'user', 'assistant'] -%}
{{- raise_exception('unknown role ' + message['role'] + '; use system, user or assistant') -}}
{%- endif -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['role'] == 'assistant' -%}
{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}
{%- else -%}
{{- message['content'] + '<|im_end|>' -}}
{%- endif -%}
{{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}"""


def check_messages(messages: list[dict]) -> None:
    """Raise a clear error unless messages is a list of {"role": system|user|assistant, "content": str}."""
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(f"message {k} is {m!r:.80}; each message must be "
                              f"{{'role': one of {', '.join(ROLES)}, 'content': a string}}")


def add_chat_tokens(tok):
    """tok with <|endoftext|>, <|im_start|> and <|im_end|> as special tokens (new ids only for missing ones).

    train_gpt_tokenizer already reserves them, so a base model trained with it has their embedding rows;
    a tokenizer that gains new ids needs a model with a larger vocab_size.
    """
    if not hasattr(tok, "with_special_tokens"):
        raise ConfigError(f"the chat template needs special tokens, which a {type(tok).__name__} lacks; "
                          "use the byte-level BPE tokenizer (--tokenizer=bpe)")
    missing = [s for s in SPECIAL_TOKENS if s not in tok.special_tokens]
    return tok.with_special_tokens(missing) if missing else tok


def render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text; add_generation_prompt opens an assistant turn for the model to write."""
    check_messages(messages)
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def encode_chat(tok, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, mask): the ids of render(messages), and 1 where the model must produce the token.

    Equal to tok.encode(render(messages), allowed_special="all") when no content holds a special token's text.
    Each piece between two special tokens is encoded whole, as that call does; in an assistant piece
    "assistant\\n{content}" a token counts as content when any of its bytes is content (the same overlap
    rule as transformers' assistant mask: "\\n" can merge with a reply that starts with whitespace).
    """
    check_messages(messages)
    missing = [s for s in CHAT_TOKENS if s not in getattr(tok, "special_tokens", {})]
    if missing:
        raise ConfigError(f"the tokenizer has no {missing[0]} token; call add_chat_tokens(tok) first")
    start, end = tok.special_tokens[IM_START], tok.special_tokens[IM_END]
    newline = tok.encode("\n")
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        header = f"{m['role']}\n"
        piece = tok.encode(header + m["content"], disallowed_special=())  # content is plain text, whatever it holds
        is_answer = int(m["role"] == "assistant")
        piece_mask = [0] * len(piece)
        if is_answer:
            n_header, done = len(header.encode("utf-8")), 0
            for k, t in enumerate(piece):
                done += len(tok.decode_bytes([t]))
                if done > n_header:  # this token holds content bytes: it and every later one are the answer's
                    piece_mask[k:] = [1] * (len(piece) - k)
                    break
        ids += [start, *piece, end, *newline]
        mask += [0, *piece_mask, is_answer, *[0] * len(newline)]
    if add_generation_prompt:
        prompt = [start, *tok.encode("assistant\n")]
        ids += prompt
        mask += [0] * len(prompt)
    return ids, mask
