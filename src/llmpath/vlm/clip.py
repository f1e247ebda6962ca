"""CLIP: a ViT and a small text encoder trained so that an image and its caption land on the same point.

    llmpath vlm clip --preset=small          # digit scenes with bilingual captions (vlm/data.py)

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(https://arxiv.org/abs/2103.00020). A batch of B (image, caption) pairs gives a B x B table of cosine
similarities between L2-normalised image and text embeddings, times a learned scale 1/temperature. Row i should
pick text i (image -> text) and column j image j (text -> image): the symmetric InfoNCE loss is the mean of the two
cross-entropies, so every other caption in the batch is a negative for free.

The image side is the stage-7 ViT (imported), read at its [CLS] output. The text side is the Transformer stage's
pre-LN EncoderLayer (imported) over token + learned position embeddings, read at the caption's last real token,
<eos>, like CLIP. Captions are `tokenizer.encode(text) + [eos]`, right-padded, with no <bos>: the <eos> output is
the summary, so nothing else is needed in front. CLIP's text encoder attends causally (it shares code with GPT-2);
ours sees the whole caption, with a key-padding mask so the pads change nothing. Both sides end in a bias-free
projection to embed_dim.

Our captions come from templates: a batch of 64 two-digit scenes holds repeated captions. Two pairs with the same
caption are each other's positives, not negatives (see `contrastive_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.common import count_params, log, setup_logging
from llmpath.config import ConfigError, RunConfig, TrainConfig, check_heads, opt, sub
from llmpath.data.batching import EpochBatches, pad_sequences
from llmpath.plotting import save_fig, training_curves, use_cjk
from llmpath.runs import comparable_config, reuse, start_run
from llmpath.train import fit, read_metrics
from llmpath.transformer.attention import padding_mask
from llmpath.transformer.model import EncoderLayer, TransformerConfig
from llmpath.vit.model import ViT, ViTConfig
from llmpath.vlm.data import ZERO_SHOT, build_tokenizer, scene_splits, single_digit_scenes


@dataclass
class TextEncoderConfig:
    vocab_size: int = opt(64, "tokens in the caption vocabulary (set from the tokenizer)", min=1)
    pad_id: int = opt(0, "the padding token's id (set from the tokenizer)", min=0)
    block_size: int = opt(48, "longest caption, <eos> included, in tokens", min=1)
    n_layer: int = opt(2, "encoder layers", min=1)
    n_head: int = opt(4, "attention heads (must divide n_embd)", min=1)
    n_embd: int = opt(64, "width of the token stream", min=1)
    n_ff: int = opt(128, "inner width of the feed-forward", min=1)
    dropout: float = opt(0.0, "dropout on embeddings, attention weights and residual branches", min=0, below=1)

    def check(self) -> None:
        check_heads(self.n_head, self.n_embd)


@dataclass
class CLIPConfig:
    vit: ViTConfig = opt(ViTConfig(image_size=56, patch_size=7, n_layer=4, n_head=4, n_embd=64, n_ff=128),
                         "the image encoder (its classification head is not used)")
    text: TextEncoderConfig = sub(TextEncoderConfig)
    embed_dim: int = opt(64, "width of the shared image-text space", min=1)
    init_temperature: float = opt(0.07, "softmax temperature at the start (CLIP: 0.07, a logit scale of ~14.3)",
                                  above=0)
    max_logit_scale: float = opt(100.0, "cap on the learned logit scale 1/temperature (CLIP: 100)", above=0)
    pixel_mean: float = opt(0.0, "images are scaled by (x - mean) / std (set from the training images)")
    pixel_std: float = opt(1.0, "see pixel_mean", above=0)


# ----------------------------------------------------------------------------- text encoder

class TextEncoder(nn.Module):
    """ids (B, T), right-padded with pad_id -> (B, n_embd): the final-LayerNorm output at each row's last real token."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        # the ViT's layer recipe: pre-LN, GELU, biases (CLIP's text Transformer is built the same way)
        enc = TransformerConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_ff=cfg.n_ff,
                                dropout=cfg.dropout, bias=True, norm="pre", activation="gelu", sdpa=True)
        self.layers = nn.ModuleList(EncoderLayer(enc) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.n_embd)
        nn.init.normal_(self.tok.weight, std=0.02)  # CLIP's initialisation of the two tables
        nn.init.normal_(self.pos.weight, std=0.01)

    def forward(self, ids: Tensor) -> Tensor:
        B, T = ids.shape
        if T > self.cfg.block_size:
            raise ValueError(f"captions of {T} tokens, longer than block_size={self.cfg.block_size}")
        keep = ids != self.cfg.pad_id  # (B, T)
        x = self.drop(self.tok(ids) + self.pos(torch.arange(T, device=ids.device)))  # (B, T, C)
        mask = padding_mask(ids, self.cfg.pad_id)  # (B, 1, 1, T): no token attends to a pad
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        # the running count of real tokens first reaches its maximum at the last real one (<eos>)
        last = keep.long().cumsum(1).argmax(1)  # (B,)
        return x[torch.arange(B, device=ids.device), last]  # (B, C)


# ----------------------------------------------------------------------------- model

class CLIP(nn.Module):
    """images (B, C, S, S) in [0, 1] and caption ids (B, T) -> logits_per_image (B, B); row i's target is column i."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.vit = ViT(cfg.vit)
        self.vit.head = nn.Identity()  # the ViT's forward now returns its pooled [CLS] output, not class logits
        self.text = TextEncoder(cfg.text)
        self.image_proj = nn.Linear(cfg.vit.n_embd, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text.n_embd, cfg.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=cfg.vit.n_embd ** -0.5)
        nn.init.normal_(self.text_proj.weight, std=cfg.text.n_embd ** -0.5)
        # learned in log space: the scale stays positive and a step changes it by a ratio, not by an amount
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    def image_features(self, images: Tensor) -> Tensor:
        """(B, C, S, S) in [0, 1] -> (B, n_embd): the ViT's final-LayerNorm [CLS] output, before the projection."""
        return self.vit((images - self.cfg.pixel_mean) / self.cfg.pixel_std)

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, embed_dim), unit length."""
        return F.normalize(self.image_proj(self.image_features(images)), dim=-1)

    def encode_text(self, ids: Tensor) -> Tensor:
        """(B, T) caption + <eos>, right-padded -> (B, embed_dim), unit length."""
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)

    def scale(self) -> Tensor:
        """exp(logit_scale), at most max_logit_scale. CLIP clamps the parameter after each optimizer step; the shared
        fit has no such hook, so the cap is applied here (the gradient is zero while the scale sits on it)."""
        return self.logit_scale.clamp(max=math.log(self.cfg.max_logit_scale)).exp()

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        img, txt = self.encode_image(images), self.encode_text(ids)  # (B, D) each
        return self.scale() * img @ txt.T  # (B_img, B_txt); logits_per_text is its transpose


# ----------------------------------------------------------------------------- objective

def same_caption(keys: Tensor) -> Tensor:
    """(B,) caption keys, or (B, T) padded ids -> (B, B) bool: pair i and pair j have the same caption.

    same_caption(torch.tensor([7, 3, 7])) -> [[T, F, T], [F, T, F], [T, F, T]]
    """
    if keys.dim() == 2:  # equal rows of ids = equal captions
        keys = torch.unique(keys, dim=0, return_inverse=True)[1]
    return keys[:, None] == keys[None, :]


def contrastive_loss(logits: Tensor, same: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of logits_per_image (B, B): mean of the image -> text and text -> image cross-entropies.

    With `same` (B, B) bool, the target of row i is uniform over the j with same[i, j]: CE(row i, same[i] / n_i).
    Why not the plain diagonal target: with 100 two-digit captions, a batch of 64 holds repeats, and the diagonal
    would tell image i to move away from text j = the very caption of image i, a contradiction that caps what the
    model can learn. Why not drop the repeats: that throws away images and makes the batch smaller. A uniform target
    over the equal captions is the cross-entropy against the true answer "any of these". Since equal captions give
    equal text embeddings, the image -> text row puts equal probability q on its n_i positives and the loss is
    -log q >= log n_i: the floor is log n_i, not 0 (the gradient is that of -log(n_i q), the "any positive" loss).
    Without repeats, and with same=None, this is CLIP's loss exactly.
    """
    if same is None:
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    target = same.to(logits.dtype)
    target = target / target.sum(1, keepdim=True)  # symmetric: the text -> image targets are the same matrix
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def clip_loss(model: nn.Module, batch: tuple) -> Tensor:
    """The shared fit's objective. batch = (images, ids) or (images, ids, keys): equal keys = the same caption
    (a bilingual batch gives one scene's zh and en captions the same key); without keys, equal ids rows are."""
    images, ids, *rest = batch
    keys = rest[0] if rest else ids
    return contrastive_loss(model(images, ids), same_caption(keys))


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def embed(model: CLIP, images: Tensor | None = None, ids: Tensor | None = None,
          batch_size: int = 500) -> Tensor:
    """Unit embeddings of images or of caption ids, in batches on the model's device, returned on the CPU (eval mode)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    x, fn = (images, model.encode_image) if images is not None else (ids, model.encode_text)
    out = torch.cat([fn(x[a:a + batch_size].to(device)).cpu() for a in range(0, len(x), batch_size)])
    model.train(was)
    return out


def recall_at_k(image_emb: Tensor, text_emb: Tensor, ks: Sequence[int] = (1, 5),
                same: Sequence | None = None) -> dict[str, float]:
    """Pair i = (image i, text i). i2t@k: share of images whose k most similar texts hold a right one; t2i@k the same
    the other way. None: only item i is right. `same`: a key per pair (e.g. its caption); several test scenes share
    a caption, and any of them is a right answer. Then image -> text ranks each distinct caption once (the text of
    its first pair): equal captions have equal embeddings, and copies of one caption would fill the top k.

    recall_at_k(e, e) -> {"i2t@1": 1.0, "i2t@5": 1.0, "t2i@1": 1.0, "t2i@5": 1.0} for distinct unit rows e
    """
    n = len(image_emb)
    if same is None:
        keys, first = torch.arange(n), torch.arange(n)
    else:
        _, first_np, inverse = np.unique(np.asarray(same), return_index=True, return_inverse=True)
        keys, first = torch.as_tensor(inverse.reshape(-1)), torch.as_tensor(first_np)
    out = {}
    # i2t: the gallery is one text per key (column c is key c); t2i: every image, right when its key matches
    for name, s, gallery_keys in (("i2t", image_emb @ text_emb[first].T, torch.arange(len(first))),
                                  ("t2i", text_emb @ image_emb.T, keys)):
        for k in ks:
            top = s.topk(min(k, s.shape[1]), dim=1).indices  # (N, k)
            out[f"{name}@{k}"] = float((gallery_keys[top] == keys[:, None]).any(1).float().mean())
    return out


def prompt_ids(tokenizer, lang: str = "zh", template: str | None = None) -> Tensor:
    """(10, T) ids of the zero-shot prompts for the digits 0-9 ("一张数字 7 的图片" + <eos>), right-padded."""
    if template is None and lang not in ZERO_SHOT:
        raise ConfigError(f"no zero-shot prompt for language '{lang}'; choose one of: {', '.join(ZERO_SHOT)}")
    template = template or ZERO_SHOT[lang]
    return pad_sequences([tokenizer.encode(template.format(d=d)) + [tokenizer.eos_id] for d in range(10)],
                         tokenizer.pad_id)


@torch.no_grad()
def zero_shot(model: CLIP, images: Tensor, class_ids: Tensor) -> Tensor:
    """Classify images by caption: the class whose prompt (class_ids: (K, T), one row per class) is nearest. -> (N,)"""
    return (embed(model, images=images) @ embed(model, ids=class_ids).T).argmax(1)


# ----------------------------------------------------------------------------- run

TOPIC = "vlm"
CLIP_PRESETS: dict[str, dict] = {
    "tiny": {"threads": 1, "n_train": 64, "n_val": 32, "n_test": 32, "max_objects": 2,
             "model.vit.n_layer": 1, "model.vit.n_head": 2, "model.vit.n_embd": 16, "model.vit.n_ff": 32,
             "model.text.n_layer": 1, "model.text.n_head": 2, "model.text.n_embd": 16, "model.text.n_ff": 32,
             "model.embed_dim": 16, "train.max_steps": 4, "train.batch_size": 16, "train.warmup_steps": 1,
             "train.eval_interval": 0, "train.progress": False},
    # ~40 s on one CPU thread. Patch 14 (4x4 = 16 patches), not the default 7: at 7 (64 patches) a step costs ~3x
    # more and 40 s of it stays near chance; a 2-layer ViT at 14 reaches test recall@1 ~0.2 (see the report)
    "small": {"threads": 1, "model.vit.patch_size": 14, "model.vit.n_layer": 2, "model.text.n_layer": 1,
              "train.max_steps": 900, "train.batch_size": 64, "train.lr": 2e-3, "train.warmup_steps": 30,
              "train.weight_decay": 0.05, "train.eval_interval": 150},
}


@dataclass
class CLIPRun(RunConfig):
    lang: Literal["zh", "en", "both"] = opt("both", "caption language of the training pairs (both: each pair's "
                                            "language drawn at random, so one model reads zh and en)")
    min_objects: int = opt(2, "fewest digits in a training scene", min=2, max=4)
    max_objects: int = opt(4, "most digits in a training scene (val and test: the same mix)", min=2, max=4)
    n_train: int = opt(4000, "training scenes", min=1)
    n_val: int = opt(500, "validation scenes (model selection by recall@1)", min=1)
    n_test: int = opt(500, "test scenes, built from held-out digit images", min=1)
    model: CLIPConfig = sub(CLIPConfig)
    train: TrainConfig = sub(TrainConfig)

    def check(self) -> None:
        if self.min_objects > self.max_objects:
            raise ConfigError(f"--min_objects={self.min_objects} is above --max_objects={self.max_objects}; "
                              f"give min_objects <= max_objects")


def caption_ids(captions: Sequence[str], tok) -> Tensor:
    """(N, T) ids of caption + <eos>, right-padded (no <bos>: the summary is read at <eos>)."""
    return pad_sequences([tok.encode(c) + [tok.eos_id] for c in captions], tok.pad_id)


class CaptionBatches(EpochBatches):
    """Shuffled (images, ids, keys) batches; each pair's caption language is drawn by (seed, i) from those in `ids`.

    keys[i] names scene i's caption meaning, the same for its zh and en captions: clip_loss treats equal keys as
    positives, so a zh caption is never a negative for the en caption of the same scene content.
    """

    def __init__(self, images: Tensor, ids: dict[str, Tensor], keys: Tensor, batch_size: int, pad_id: int,
                 seed: int = 0):
        super().__init__(len(images), batch_size, lambda idx: None, seed)
        T = max(x.shape[1] for x in ids.values())
        self.ids = torch.stack([F.pad(x, (0, T - x.shape[1]), value=pad_id) for x in ids.values()])  # (L, N, T)
        self.images, self.keys, self.pad_id = images, keys, pad_id

    def __call__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(self.indices(i))
        lang = torch.as_tensor(np.random.default_rng([self.seed, 2, i]).integers(0, len(self.ids), len(idx)))
        ids = self.ids[lang, idx]  # (B, T)
        used = int((ids != self.pad_id).any(0).nonzero().max()) + 1  # drop columns that are pad in every row
        return self.images[idx], ids[:, :used], self.keys[idx]


def caption_keys(captions: Sequence[str]) -> Tensor:
    """(N,) int: equal captions get equal keys. ["a", "b", "a"] -> [0, 1, 0]"""
    return torch.as_tensor(np.unique(np.asarray(captions), return_inverse=True)[1].reshape(-1))


def prepare(cfg: CLIPRun):
    """(cfg with vocabulary, pad id and pixel scaling filled in, the scene splits, the tokenizer)."""
    # one split of the digit images whatever --seed says (as stage 7): the zero-shot test digits stay unseen
    splits = scene_splits("digits", cfg.n_train, cfg.n_val, cfg.n_test, cfg.min_objects, cfg.max_objects, seed=0)
    tok = build_tokenizer(splits)
    longest = max(len(tok.encode(c)) + 1 for sc in splits.values() for caps in sc.captions.values() for c in caps)
    if longest > cfg.model.text.block_size:
        raise ConfigError(f"--model.text.block_size={cfg.model.text.block_size} is shorter than the longest caption "
                          f"({longest} tokens with <eos>); give at least {longest}")
    train = splits["train"].images
    model = replace(cfg.model, text=replace(cfg.model.text, vocab_size=tok.vocab_size, pad_id=tok.pad_id),
                    pixel_mean=float(train.mean()), pixel_std=float(train.std()))
    return replace(cfg, model=model), splits, tok


def langs_of(cfg: CLIPRun) -> tuple[str, ...]:
    return ("zh", "en") if cfg.lang == "both" else (cfg.lang,)


def retrieval_scores(model: CLIP, scenes, tok, lang: str) -> dict[str, float]:
    """Recall@1/5 both ways on a split's scenes with their `lang` captions (equal captions count as right)."""
    img = embed(model, images=scenes.images)
    txt = embed(model, ids=caption_ids(scenes.captions[lang], tok))
    return recall_at_k(img, txt, (1, 5), same=scenes.captions[lang])


def run_clip(cfg: CLIPRun) -> dict:
    """Train one CLIP with the shared fit (best val recall@1 kept), test retrieval and zero-shot, write results.json."""
    setup_logging()
    cfg = replace(cfg, name=f"{cfg.name or cfg.preset or 'default'}-clip")  # runs/vlm/small-clip: apart from the captioner's
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)
    cfg, splits, tok = prepare(cfg)
    run = start_run(cfg, TOPIC, tokenizer=tok, key=key, model_class="llmpath.vlm.clip:CLIP")
    torch.manual_seed(cfg.seed)
    model = CLIP(cfg.model)
    train, val, test = splits["train"], splits["val"], splits["test"]
    langs = langs_of(cfg)
    batches = CaptionBatches(train.images, {lang: caption_ids(train.captions[lang], tok) for lang in langs},
                             caption_keys(train.captions["zh"]), cfg.train.batch_size, tok.pad_id, seed=cfg.seed)
    log.info(f"CLIP {count_params(model):,} parameters: {len(train)} training scenes of {cfg.min_objects}-"
             f"{cfg.max_objects} digits, captions {'+'.join(langs)} -> {run.path}")
    lang0, bs = langs[0], cfg.train.batch_size
    val_ids, val_keys = caption_ids(val.captions[lang0], tok), caption_keys(val.captions[lang0])

    def evaluate(m: CLIP) -> dict:
        img, txt = embed(m, images=val.images), embed(m, ids=val_ids)
        r = recall_at_k(img, txt, (1,), same=val.captions[lang0])
        logits = float(m.scale()) * img @ txt.T
        # the loss over training-sized blocks, so that it reads on the same scale as the training loss
        blocks = [slice(a, a + bs) for a in range(0, len(img) - bs + 1, bs)] or [slice(0, len(img))]
        loss = np.mean([float(contrastive_loss(logits[b, b], same_caption(val_keys[b]))) for b in blocks])
        return {"val_loss": loss, "val_r1": (r["i2t@1"] + r["t2i@1"]) / 2, "logit_scale": float(m.scale())}

    res = fit(model, clip_loss, batches, cfg.train, run=run, evaluate=evaluate, unit="samples",
              best_metric="val_r1", best_mode="max", restore_best=True)
    summary = {"params": count_params(model), "train_scenes": len(train), "objects": f"{cfg.min_objects}-{cfg.max_objects}",
               "lang": cfg.lang, "steps": res.step, "seconds": round(res.seconds, 1), "val_r1": res.best,
               "logit_scale": round(model.scale().item(), 2)}
    for lang in langs:
        summary.update({f"test_{lang}_{k}": v for k, v in retrieval_scores(model, test, tok, lang).items()})
    digits, labels = single_digit_scenes("test", size=cfg.model.vit.image_size)
    for lang in langs:
        pred = zero_shot(model, digits, prompt_ids(tok, lang))
        summary[f"zero_shot_{lang}"] = float((pred == labels).float().mean())
    rows = read_metrics(run.path / "metrics.jsonl")
    curves = save_fig(training_curves(rows, f"CLIP（{cfg.preset or '自定义'}）"), run.figures / "curves.png")
    shown = save_fig(retrieval_figure(model, test.images, test.captions[lang0], tok), run.figures / "retrieval.png")
    summary = run.finish({**summary, "figures": [curves, shown]})
    log.info(f"CLIP: test {lang0} recall@1 image->text {summary[f'test_{lang0}_i2t@1']:.3f}, text->image "
             f"{summary[f'test_{lang0}_t2i@1']:.3f}; zero-shot digits "
             + ", ".join(f"{lang} {summary[f'zero_shot_{lang}']:.3f}" for lang in langs)
             + f" after {res.step} steps in {res.seconds:.0f} s")
    return summary


# ----------------------------------------------------------------------------- figure

def retrieval_figure(model: CLIP, images: Tensor, captions: Sequence[str], tok, n: int = 4, k: int = 3,
                     title: str = "以文搜图：测试集描述与最相近的 3 张图"):
    """n distinct test captions (rows), each with its k nearest images; a green frame marks an image whose own
    caption is the query, a red one any other."""
    use_cjk()
    queries = list(dict.fromkeys(captions))[:n]  # the first n different captions, in order
    img = embed(model, images=images)
    txt = embed(model, ids=caption_ids(queries, tok))
    top = (txt @ img.T).topk(min(k, len(images)), dim=1).indices  # (n, k)
    fig, axes = plt.subplots(len(queries), k, figsize=(2.2 * k + 2.4, 2.3 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        for c in range(k):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= top.shape[1]:
                ax.axis("off")
                continue
            j = int(top[r, c])
            x = images[j]
            ax.imshow(x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy(),
                      cmap="gray_r" if x.shape[0] == 1 else None, vmin=0, vmax=1)
            right = captions[j] == q
            for side in ax.spines.values():
                side.set_edgecolor("tab:green" if right else "tab:red")
                side.set_linewidth(3)
            ax.set_title(f"第 {c + 1} 名" + ("（对）" if right else "（错）"), fontsize=9)
        axes[r, 0].set_ylabel(q if len(q) <= 12 else q.replace("，", "，\n"), rotation=0, ha="right", va="center",
                              fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
