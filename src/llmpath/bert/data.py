"""BERT pretraining data: documents of sentences, sentence pairs for NSP, masked batches for MLM.

Devlin et al. 2019 (https://arxiv.org/abs/1810.04805), section 3.1 and appendix A.2:

    docs = pretraining_documents(["wiki", "tweets-train"])   # one list of sentences per document
    examples = make_pairs(docs, tok, max_len=128)           # segment A, segment B, and "is B random?"
    batches = PretrainBatches(examples, 32, tok)             # batches(step) -> PretrainBatch, 15% of tokens masked

`llmpath bert pretrain --sources=wiki,tweets-train` runs it all (pretrain.py).

Every source is offline: a Wikipedia sample that gensim ships for its tests, Shakespeare's speeches,
and the *training* texts of the classification datasets of stages 1 and 5. Their validation and
test texts never reach pretraining, so the finetuning scores stay honest.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from itertools import chain
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from llmpath.bert.objectives import PretrainBatch
from llmpath.config import ConfigError
from llmpath.data.batching import EpochBatches, _rng, sequential_batches
from llmpath.data.corpora import DataError, _package_dir, load_classification, load_text, split_indices

SPLIT_SEED = 0  # the train/val/test split of stages 1 and 5 (finetune.py uses the same)

# ------------------------------------------------------------------------------ sentences

_EN_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?= )")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "prof", "jr", "sr", "vs", "etc", "cf", "fig", "figs",
           "approx", "ca", "c", "inc", "ltd", "co", "corp", "vol", "pp", "p", "ed", "eds", "gen", "col", "lt",
           "sgt", "capt", "rev", "hon", "mt", "ft", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
           "sept", "oct", "nov", "dec"}


def _abbreviation(para: str, end: int) -> bool:
    """Is the word that ends at para[end] (just before a '.') an abbreviation or an initial?"""
    word = para[para.rfind(" ", 0, end) + 1:end].lstrip("\"'“‘([")
    number = word in ("No", "Nos") and para[end + 2:end + 3].isdigit()  # "No. 5", not "No. Thanks"
    return word.lower() in _ABBREV or "." in word or (len(word) == 1 and word.isalpha()) or number


def split_english(text: str) -> list[str]:
    """Sentences of English text: a cut after . ! ? (and closing quotes) before a space; blank lines end
    paragraphs. Abbreviations and initials ("Dr.", "e.g.", "J. R. R.") do not end a sentence.

    split_english("It rained. Dr. Li stayed in! Why?") -> ['It rained.', 'Dr. Li stayed in!', 'Why?']
    """
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())  # a single line break inside a paragraph is a space
        start = 0
        for m in _EN_END.finditer(para):
            if m.group()[0] == "." and len(m.group()) == 1 and _abbreviation(para, m.start()):
                continue
            out.append(para[start:m.end()].strip())
            start = m.end()
        out.append(para[start:].strip())
    return [s for s in out if s]


# 。！？ and their half-width forms; a '.' right after a Chinese character (not a decimal point) too
_ZH_END = re.compile(r"(?:[。！？!?]+|(?<=[\u4e00-\u9fff])\.+(?![0-9]))[”’」』）)\"']*")


def split_chinese(text: str) -> list[str]:
    """Sentences of Chinese text: a cut after 。！？ (or ! ? or a '.' after a Chinese character) and at line breaks.

    split_chinese("质量不错。就是太贵了！还买吗？") -> ['质量不错。', '就是太贵了！', '还买吗？']
    """
    out = []
    for line in text.splitlines():
        start = 0
        for m in _ZH_END.finditer(line):
            out.append(line[start:m.end()].strip())
            start = m.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


def _is_chinese(texts: list[str]) -> bool:
    """Is most of the text (a sample of it) Chinese characters?"""
    sample = "".join(texts[:200])
    han = len(re.findall(r"[\u4e00-\u9fff]", sample))
    return han > 0.3 * max(1, len(re.findall(r"\w", sample)))


# ------------------------------------------------------------------------------ Wikipedia

_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_END_SECTIONS = {"see also", "references", "external links", "further reading", "notes", "bibliography",
                 "sources", "footnotes", "citations", "notes and references"}
_DROP_NS = {"file", "image", "category", "media"}
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|)[\s\S])*?\|\}")
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_DROP_TAGS = re.compile(r"<(math|gallery|timeline|imagemap|score|syntaxhighlight|source|pre|chem|ce|hiero)\b"
                        r"[^>]*>[\s\S]*?</\1\s*>", re.I)
_REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>[\s\S]*?</ref\s*>", re.I)
_HEADING = re.compile(r"^\s*=+\s*(.*?)\s*=+\s*$")


def _sub_innermost(pattern: re.Pattern, repl, text: str) -> str:
    """Apply a substitution until nothing matches: nested {{ {{ }} }} go from the inside out."""
    n = 1
    while n:
        text, n = pattern.subn(repl, text)
    return text


def _link_text(m: re.Match) -> str:
    """[[a|b]] -> b, [[a]] -> a; files, categories and links to other languages -> ''."""
    target, _, label = m.group(1).lstrip(":").partition("|")
    prefix, colon, rest = target.partition(":")
    prefix = prefix.strip().lower()
    if colon and (prefix in _DROP_NS or (re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?", prefix) and not label)):
        return ""
    if label:
        return label.rsplit("|", 1)[-1]
    return rest if colon else target


def wiki_to_text(markup: str) -> list[str]:
    """Plain-text paragraphs of one article's wiki markup (templates, tables, references, files dropped)."""
    text = re.sub(r"<!--[\s\S]*?-->", "", markup)
    text = _REF.sub("", _DROP_TAGS.sub("", text))
    text = _sub_innermost(_TEMPLATE, "", text)
    text = _sub_innermost(_TABLE, "", text)
    text = _sub_innermost(_LINK, _link_text, text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]*\s*([^\]]*)\]", r"\1", text)  # [http://x label] -> label
    text = re.sub(r"https?://\S+", "", text)
    text = re.sub(r"<[^<>]*>", " ", text)  # remaining tags (<br/>, <small>...) keep their content
    text = re.sub(r"'{2,}|__[A-Z]+__", "", text)
    paragraphs = []
    for line in text.splitlines():
        if h := _HEADING.match(line):
            if h.group(1).strip().lower() in _END_SECTIONS:
                break  # what follows is lists of links and sources, not prose
            continue
        line = re.sub(r"^[*#:;]+", "", line.strip()).strip()
        if not line or line[0] in "|!{}[" or "{{" in line or "}}" in line:
            continue  # leftovers of tables and broken templates
        line = html.unescape(line).replace("\xa0", " ")
        line = re.sub(r"\(\s*[,;:]?\s*\)", "", line)  # "( )" left where a template stood
        line = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(line.split()))
        paragraphs.append(line)
    return paragraphs


@lru_cache(maxsize=1)
def _wiki() -> tuple[tuple[str, ...], ...]:
    path = _package_dir("gensim") / "test" / "test_data" / _WIKI_FILE
    if not path.exists():
        raise DataError(f"gensim's Wikipedia sample {path} is missing; "
                        "reinstall gensim (`pip install --force-reinstall gensim`)")
    docs = []
    with bz2.open(path) as f:
        for _, el in ET.iterparse(f):
            if el.tag.rpartition("}")[2] != "page":
                continue
            body = el.findtext("{*}revision/{*}text") or ""
            redirect = el.find("{*}redirect") is not None or body.lstrip().upper().startswith("#REDIRECT")
            if el.findtext("{*}ns") == "0" and not redirect:  # articles only: no talk, user or template pages
                sents = [s for p in wiki_to_text(body) for s in split_english(p) if len(s.split()) >= 3]
                if sents:
                    docs.append(tuple(sents))
            el.clear()  # keep memory flat: the dump is read page by page
    return tuple(docs)


def wiki_documents() -> list[list[str]]:
    """English Wikipedia articles from gensim's test data, one document (list of sentences) per article."""
    return [list(d) for d in _wiki()]


# ------------------------------------------------------------------------- other sources

_SPEAKER = re.compile(r"[A-Z][A-Z0-9 .,'&-]*:")


def shakespeare_documents(name: str = "shakespeare") -> list[list[str]]:
    """One document per speech, its lines the "sentences" (the text is "SPEAKER:\\nline\\nline", blank-line separated;
    blocks without a speaker, such as opening stage directions, are skipped)."""
    docs = []
    for block in re.split(r"\n\s*\n", load_text(name)):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if len(lines) > 1 and _SPEAKER.fullmatch(lines[0]):
            docs.append(lines[1:])
    return docs


def domain_documents(task: str, indices=None) -> list[list[str]]:
    """Texts of a classification dataset (labels unused), each text one document split into sentences."""
    texts = load_classification(task).texts
    if indices is not None:
        texts = [texts[i] for i in indices]
    split = split_chinese if _is_chinese(texts) else split_english
    return [d for d in (split(t) for t in texts) if d]


def train_texts(task: str) -> np.ndarray:
    """Indices of the training texts of a classification task: the 80% part of stages 1 and 5's split."""
    return split_indices(len(load_classification(task)), seed=SPLIT_SEED)[0]


SOURCES: dict[str, Callable[[], list[list[str]]]] = {
    "wiki": wiki_documents,
    "shakespeare": lambda: shakespeare_documents("shakespeare"),
    "shakespeare-tiny": lambda: shakespeare_documents("shakespeare-tiny"),
    "tweets-train": lambda: domain_documents("tweets", train_texts("tweets")),
    "chinese-reviews-train": lambda: domain_documents("chinese-reviews", train_texts("chinese-reviews")),
}


def pretraining_documents(sources: list[str], seed: int = 0) -> list[list[str]]:
    """The documents of the named sources, in a seeded shuffled order (sources interleave)."""
    if not sources:
        raise ConfigError(f"no pretraining sources given; choose from: {', '.join(SOURCES)}")
    if unknown := [s for s in sources if s not in SOURCES]:
        raise ConfigError(f"unknown pretraining source '{unknown[0]}'; choose from: {', '.join(SOURCES)}")
    docs = [d for s in sources for d in SOURCES[s]() if d]
    return [docs[i] for i in np.random.default_rng(seed).permutation(len(docs))]


# -------------------------------------------------------------------------------- pairs

class Example(NamedTuple):
    """Token ids of segment A and segment B (empty for MLM only), and whether B comes from another document."""

    a: list[int]
    b: list[int]
    is_random: bool


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator):
    """BERT's truncate_seq_pair in closed form: trim the longer side (B on ties), each token from a random end."""
    if len(a) + len(b) <= max_tokens:
        return a, b
    keep_b = min(len(b), max(max_tokens - len(a), max_tokens // 2))
    keep_a = max_tokens - keep_b

    def cut(x, keep):
        front = int(rng.binomial(len(x) - keep, 0.5))
        return x[front:front + keep]

    return cut(a, keep_a), cut(b, keep_b)


def _random_segment(docs: list, i: int, target: int, rng: np.random.Generator) -> list[int]:
    """Sentences from a random place in a random document other than docs[i], at least `target` tokens if it has them."""
    k = int(rng.integers(len(docs) - 1))
    doc = docs[k + (k >= i)]
    b: list[int] = []
    for sent in doc[int(rng.integers(len(doc))):]:
        b += sent
        if len(b) >= target:
            break
    return b


def _nsp_pairs(docs: list, max_tokens: int, rng: np.random.Generator, short_seq_prob: float) -> list[Example]:
    out, n_random = [], 0

    def new_target() -> int:  # sometimes shorter, so the model also sees short inputs (BERT does this per document)
        return int(rng.integers(2, max_tokens + 1)) if rng.random() < short_seq_prob else max_tokens

    for i, doc in enumerate(docs):
        chunk, length, target, j = [], 0, new_target(), 0
        while j < len(doc):
            chunk.append(doc[j])
            length += len(doc[j])
            if j == len(doc) - 1 or length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) > 1 else 1
                a = list(chain.from_iterable(chunk[:a_end]))
                # A one-sentence chunk can only get a random B (as in BERT). Tweets and reviews are mostly one
                # sentence, so the coin of the other chunks leans to IsNext by the NotNext surplus so far.
                surplus = n_random - len(out) / 2
                if len(chunk) == 1 or rng.random() < min(1.0, max(0.0, 0.5 - surplus / 8)):
                    b, is_random = _random_segment(docs, i, target - len(a), rng), True
                    j -= len(chunk) - a_end  # the sentences B did not use start the next chunk
                else:
                    b, is_random = list(chain.from_iterable(chunk[a_end:])), False
                a, b = _truncate_pair(a, b, max_tokens, rng)
                out.append(Example(a, b, is_random))
                n_random += is_random
                chunk, length, target = [], 0, new_target()
            j += 1
    return out


def _packed_chunks(docs: list, max_tokens: int) -> list[Example]:
    """Whole sentences packed into chunks of up to max_tokens (a longer sentence is cut); never across documents."""
    out = []
    for doc in docs:
        cur: list[int] = []
        for sent in doc:
            if cur and len(cur) + len(sent) > max_tokens:
                out.append(Example(cur, [], False))
                cur = []
            cur = cur + sent
            while len(cur) > max_tokens:
                out.append(Example(cur[:max_tokens], [], False))
                cur = cur[max_tokens:]
        if cur:
            out.append(Example(cur, [], False))
    return out


def make_pairs(docs: list[list[str]], tokenizer, max_len: int, seed: int = 0, nsp: bool = True,
               short_seq_prob: float = 0.1) -> list[Example]:
    """Pretraining examples of at most max_len tokens once laid out with [CLS]/[SEP].

    nsp=True: BERT's recipe (create_pretraining_data.py): fill a chunk of consecutive sentences up to
    max_len - 3 tokens, cut it at a random sentence boundary into A and B, and half of the time replace B
    by text from another document (NotNext). nsp=False: chunks of whole sentences up to max_len - 2 tokens
    (RoBERTa's DOC-SENTENCES), B empty.
    """
    if max_len < 8:
        raise ConfigError(f"max_len={max_len} leaves no room for two segments and [CLS]/[SEP]; use at least 8")
    tdocs = [[ids for s in d if (ids := tokenizer.encode(s))] for d in docs]
    tdocs = [d for d in tdocs if d]
    if nsp and len(tdocs) < 2:
        raise DataError(f"next-sentence prediction needs at least 2 non-empty documents, got {len(tdocs)}; "
                        "add sources or use --nsp=false")
    if not nsp:
        return _packed_chunks(tdocs, max_len - 2)
    return _nsp_pairs(tdocs, max_len - 3, np.random.default_rng(seed), short_seq_prob)


def layout(ex: Example, tokenizer) -> tuple[list[int], list[int]]:
    """[CLS] a [SEP] b [SEP] (or [CLS] a [SEP]) and its segment ids: 0 up to the first [SEP], 1 after."""
    ids = [tokenizer.cls_id, *ex.a, tokenizer.sep_id]
    segments = [0] * len(ids)
    if ex.b:
        ids += [*ex.b, tokenizer.sep_id]
        segments += [1] * (len(ex.b) + 1)
    return ids, segments


# ------------------------------------------------------------------------------ masking

def _generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a tuple of ints (e.g. seed, step), independent across keys."""
    return torch.Generator().manual_seed(int(np.random.default_rng(list(key)).integers(2**62)))


@lru_cache(maxsize=8)
def _ordinary_ids(vocab_size: int, special: frozenset[int]) -> Tensor:
    """Ids a random replacement may take: the vocabulary without [PAD], [UNK], [CLS], [SEP], [MASK]."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(special)] = False
    return keep.nonzero().flatten()


def mask_tokens(ids: Tensor, generator: torch.Generator | int, tokenizer,
                mlm_prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT's masking: choose round(mlm_prob * n) of each row's n ordinary tokens (at least one); of those
    80% become [MASK], 10% a random token, 10% stay. Labels: the original id where chosen, -100 elsewhere.

    ids (B, T) -> (masked ids (B, T), labels (B, T))
    """
    g = _generator(generator) if isinstance(generator, int) else generator
    special = frozenset({*tokenizer.special_ids, tokenizer.pad_id})
    ordinary = ~torch.isin(ids, torch.tensor(sorted(special)))  # (B, T)
    k = (ordinary.sum(1) * mlm_prob).round().clamp(min=1)  # (B,) tokens to choose per row
    # The k ordinary positions with the smallest random scores: a uniform choice of k, as BERT's shuffle.
    scores = torch.rand(ids.shape, generator=g).masked_fill(~ordinary, 2.0)
    rank = scores.argsort(1).argsort(1)
    chosen = ordinary & (rank < k[:, None])
    action = torch.rand(ids.shape, generator=g)  # < 0.8: [MASK]; 0.8-0.9: random token; else unchanged
    pool = _ordinary_ids(tokenizer.vocab_size, special)
    random_ids = pool[torch.randint(len(pool), ids.shape, generator=g)]
    masked = torch.where(chosen & (action < 0.8), torch.full_like(ids, tokenizer.mask_id), ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, torch.where(chosen, ids, torch.full_like(ids, -100))


# ------------------------------------------------------------------------------ batches

class PretrainBatches:
    """Shuffled masked batches, epoch by epoch; batches(step) is fixed by (seed, step), so a resumed run
    sees exactly the same data (the protocol of data.batching.EpochBatches, with `per_epoch`).

    masking="dynamic": a fresh mask every time an example is drawn, from (seed, step) (RoBERTa).
    masking="static": one mask per example, fixed by (seed, example index), as in the original BERT,
    which wrote its masked data once and copied it 10 times with different masks (dupe_factor=10).
    """

    def __init__(self, examples: list[Example], batch_size: int, tokenizer, seed: int = 0,
                 masking: str = "dynamic", mlm_prob: float = 0.15):
        if masking not in ("dynamic", "static"):
            raise ConfigError(f"unknown masking '{masking}'; choose one of: dynamic, static")
        if not examples:
            raise DataError("no pretraining examples; add documents with --sources")
        self.tok, self.seed, self.masking, self.mlm_prob = tokenizer, seed, masking, mlm_prob
        order = EpochBatches(len(examples), batch_size, collate=lambda idx: idx, seed=seed)
        self.per_epoch, self.batch_size = order.per_epoch, order.batch_size
        self._epoch: tuple[int, np.ndarray] = (-1, np.arange(0))
        # All examples laid out in one flat array; a batch gathers its rows without a Python loop over tokens.
        rows = [layout(ex, tokenizer)[0] for ex in examples]
        self.lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(self.lengths.sum()))
        self.sep1 = np.array([len(ex.a) + 1 for ex in examples])  # position of the first [SEP]
        self.nsp = np.array([-100 if not ex.b else int(ex.is_random) for ex in examples])
        if masking == "static":
            self.flat_masked, self.flat_labels = self._mask_once()

    def _gather(self, flat: np.ndarray, idx: np.ndarray, fill: int) -> Tensor:
        T = int(self.lengths[idx].max())
        pos = np.arange(T)
        inside = pos < self.lengths[idx, None]  # (B, T)
        at = np.where(inside, self.offsets[idx, None] + pos, 0)
        return torch.from_numpy(np.where(inside, flat[at], fill))

    def _mask_once(self) -> tuple[np.ndarray, np.ndarray]:
        """Static masks, blocks of 1024 examples at a time, each block's generator keyed by (seed, block)."""
        masked, labels = self.flat.copy(), np.full_like(self.flat, -100)
        for blk, idx in enumerate(sequential_batches(len(self.lengths), 1024)):
            ids = self._gather(self.flat, idx, self.tok.pad_id)
            m, lab = mask_tokens(ids, _generator(self.seed, 2, blk), self.tok, self.mlm_prob)
            inside = (torch.arange(ids.shape[1]) < torch.from_numpy(self.lengths[idx])[:, None]).numpy()
            at = (self.offsets[idx, None] + np.arange(ids.shape[1]))[inside]
            masked[at], labels[at] = m.numpy()[inside], lab.numpy()[inside]
        return masked, labels

    def batch(self, idx: np.ndarray, step: int) -> PretrainBatch:
        """The batch of examples idx, padded to its longest with pad_id (segment 0, label -100 at pads)."""
        if self.masking == "static":
            ids = self._gather(self.flat_masked, idx, self.tok.pad_id)
            labels = self._gather(self.flat_labels, idx, -100)
        else:
            ids, labels = mask_tokens(self._gather(self.flat, idx, self.tok.pad_id), _generator(self.seed, 1, step),
                                      self.tok, self.mlm_prob)
        pos = torch.arange(ids.shape[1])  # segment 1: after the first [SEP], up to the end of the example
        segments = (pos > torch.from_numpy(self.sep1[idx])[:, None]) & (pos < torch.from_numpy(self.lengths[idx])[:, None])
        return PretrainBatch(ids, segments.long(), labels, torch.from_numpy(self.nsp[idx]))

    def indices(self, step: int) -> np.ndarray:
        """Example ids of batch `step`, in EpochBatches' order; an epoch's permutation is drawn once, not per step."""
        epoch, k = divmod(step, self.per_epoch)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, _rng(self.seed, epoch).permutation(len(self.lengths)))
        return self._epoch[1][k * self.batch_size:(k + 1) * self.batch_size]

    def __call__(self, step: int) -> PretrainBatch:
        return self.batch(self.indices(step), step)


def eval_batches(examples: list[Example], batch_size: int, tokenizer, seed: int = 0,
                 mlm_prob: float = 0.15) -> list[PretrainBatch]:
    """Held-out batches in order, each example's mask fixed, so every evaluation scores the same tokens."""
    pb = PretrainBatches(examples, batch_size, tokenizer, seed=seed, masking="static", mlm_prob=mlm_prob)
    return [pb.batch(idx, 0) for idx in sequential_batches(len(examples), batch_size)]


def unigram_log_probs(train_examples: list[Example], vocab_size: int) -> Tensor:
    """(V,) log of the add-one token frequencies over the A and B ids of the training examples."""
    ids = np.fromiter((t for ex in train_examples for t in (*ex.a, *ex.b)), dtype=np.int64)
    counts = np.bincount(ids, minlength=vocab_size)[:vocab_size] + 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def unigram_mlm_loss(train_examples: list[Example], heldout_batches: list[PretrainBatch], vocab_size: int) -> float:
    """Cross-entropy (nats) of guessing each held-out masked token from add-one token frequencies alone
    (counted over the A and B ids of the training examples): the score an MLM must beat by reading context."""
    logp = unigram_log_probs(train_examples, vocab_size).double()
    targets = torch.cat([b.mlm_labels[b.mlm_labels != -100] for b in heldout_batches])
    if len(targets) == 0:
        raise DataError("the held-out batches hold no masked tokens; use more held-out examples")
    return float(-logp[targets].mean())
