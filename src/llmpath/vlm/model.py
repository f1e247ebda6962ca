"""A LLaVA-style captioner: the ViT's patch features, projected, are the first tokens the decoder reads.

    model = VLM(VLMConfig(decoder=LlamaConfig(vocab_size=tok.vocab_size, block_size=96)))
    fit(model, caption_loss, CaptionRows(splits["train"], tok, 64, langs=("zh",), tags=False), TrainConfig(max_steps=500))
    caption(model, images, tok)                  # ["左边是 3，右边是 7", ...]

Liu et al. 2023, "Visual Instruction Tuning" (LLaVA, https://arxiv.org/abs/2304.08485) and "Improved Baselines
with Visual Instruction Tuning" (LLaVA-1.5, https://arxiv.org/abs/2310.03744). The image goes through the
ViT of stage 7 (llmpath.vit.model); the hidden states of one of its layers (`feature_layer`, as Hugging Face's
`vision_feature_layer`: 0 = the embeddings, -1 = the last layer, before the final LayerNorm), without the [CLS]
token (`drop_cls`, Llava's "default" strategy), are mapped by a projector (LLaVA: one linear layer; LLaVA-1.5:
Linear-GELU-Linear) to the decoder's width, and the Llama-style decoder of stage 9 (llmpath.llama.model) reads
them as a prefix of N "image tokens" before [bos] caption [eos]. Only the caption positions are predicted.
LLaVA trains in two stages: first the projector alone, ViT and decoder frozen (`freeze`), then projector and
decoder together. Generation is the shared llmpath.generation with `prefix=`; vlm/hf.py maps the weights to and
from `transformers.LlavaForConditionalGeneration`. The tower is swappable (`tower="cnn"`): stage 7's CNN gives one
token per image tile, its last hidden layer, which shows how much of a caption the encoder alone decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import ConfigError, opt
from llmpath.generation import beam_search, generate
from llmpath.llama.model import Llama, LlamaConfig
from llmpath.train import unwrap
from llmpath.vit.cnn import CNN, CNNConfig
from llmpath.vit.model import ViT, ViTConfig


@dataclass
class VLMConfig:
    tower: Literal["vit", "cnn"] = opt("vit", "the image encoder: vit (its patch tokens), or cnn: stage 7's "
                                       "LeNet-style CNN, one token per image (tile): its last hidden layer")
    vit: ViTConfig = opt(ViTConfig(image_size=56, patch_size=7, n_layer=4, n_head=4, n_embd=64, n_ff=128),
                         "the image encoder (its classification head is not used)")
    decoder: LlamaConfig = opt(LlamaConfig(block_size=96, n_layer=2, n_head=4, n_embd=128),
                               "the text decoder (vocab_size set from the tokenizer); block_size counts the "
                               "image tokens")
    cnn: CNNConfig = opt(CNNConfig(), "the image encoder with --tower=cnn (its classification layer is not used)")
    projector: Literal["mlp", "linear"] = opt("mlp", "mlp: Linear-GELU-Linear (LLaVA-1.5); linear: one layer (LLaVA)")
    feature_layer: int = opt(-1, "ViT hidden state fed to the projector: 0 = embeddings, i = after layer i, "
                                 "-1 = the last layer (before the final LayerNorm), as Llava's vision_feature_layer")
    drop_cls: bool = opt(True, "leave the [CLS] token out of the image tokens (Llava's 'default' strategy)")
    tiles: int = opt(1, "cut the image into tiles x tiles squares, each read by the ViT on its own, their tokens "
                        "in reading order (LLaVA-NeXT's tiling: a ViT trained on small images reads a larger one)",
                     min=1)
    pad_id: int = opt(0, "padding id of the captions: its positions are not predicted (set from the tokenizer)", min=0)
    pixel_mean: float = opt(0.0, "images are scaled by (x - mean) / std (set from the training images)")
    pixel_std: float = opt(1.0, "see pixel_mean", above=0)

    @property
    def grid(self) -> int:
        """Image tokens per side of one tile: the ViT's patch grid; the CNN gives one token."""
        return self.vit.grid if self.tower == "vit" else 1

    @property
    def n_image_tokens(self) -> int:
        """Patches, plus the [CLS] token when it is kept (one token per tile with the CNN)."""
        cls = self.tower == "vit" and self.vit.pool == "cls" and not self.drop_cls
        return self.tiles ** 2 * (self.grid ** 2 + cls)

    @property
    def image_size(self) -> int:
        """Side of the images the captioner reads: the encoder's, times the tiles per side."""
        return (self.vit if self.tower == "vit" else self.cnn).image_size * self.tiles

    @property
    def n_features(self) -> int:
        """Width of one image token before the projector."""
        return self.vit.n_embd if self.tower == "vit" else self.cnn.hidden

    def check(self) -> None:
        n = self.vit.n_layer
        if self.tower == "vit" and not -(n + 1) <= self.feature_layer <= n:
            raise ConfigError(f"--feature_layer={self.feature_layer} is not a hidden state of a {n}-layer ViT; "
                              f"choose 0..{n} (or -1 for the last layer)")
        if self.decoder.block_size < self.n_image_tokens + 2:
            raise ConfigError(f"--decoder.block_size={self.decoder.block_size} leaves no room for a caption after "
                              f"{self.n_image_tokens} image tokens; make it at least {self.n_image_tokens} + the "
                              f"longest caption + 2")


class Projector(nn.Module):
    """(B, N, vit n_embd) -> (B, N, decoder n_embd): the bridge from image features to the decoder's tokens."""

    def __init__(self, n_in: int, n_embd: int, kind: str = "mlp"):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_embd)
        self.fc2 = nn.Linear(n_embd, n_embd) if kind == "mlp" else None  # LLaVA-1.5: a hidden layer helps
        for fc in (self.fc1, self.fc2) if self.fc2 is not None else (self.fc1,):
            # Hugging Face Llava's init; zero biases: torch's default ones would add the same random vector to
            # every image token, larger at the start than what tells the images apart
            nn.init.normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        return x if self.fc2 is None else self.fc2(F.gelu(x))


class VLM(nn.Module):
    """images (B, C, S, S) in [0, 1] and ids (B, T) -> next-token logits (B, T, vocab_size) of the text positions."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        if cfg.tower == "vit":
            self.vit = ViT(cfg.vit)
            self.vit.head = nn.Identity()  # no classes here (and the same state dict as CLIP's ViT, for pretraining)
        else:
            self.cnn = CNN(cfg.cnn)
            self.cnn.fc2 = nn.Identity()  # no classes here either: features() stops before it
        self.projector = Projector(cfg.n_features, cfg.decoder.n_embd, cfg.projector)
        self.decoder = Llama(cfg.decoder)
        self.frozen = {"vision": False, "decoder": False}

    @property
    def tower(self) -> nn.Module:
        """The image encoder, ViT or CNN."""
        return self.vit if self.cfg.tower == "vit" else self.cnn

    def vision_features(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, N, vit n_embd): hidden state `feature_layer` of the ViT, [CLS] dropped or kept; with
        tiles > 1, the tiles' tokens one tile after another, row by row. The CNN: (B, tiles^2, hidden)."""
        x = (images - self.cfg.pixel_mean) / self.cfg.pixel_std
        t, B = self.cfg.tiles, len(images)
        if t > 1:  # (B, C, t*s, t*s) -> (B*t*t, C, s, s): every tile an image of its own
            s = self.cfg.image_size // t
            x = x.unflatten(2, (t, s)).unflatten(4, (t, s)).permute(0, 2, 4, 1, 3, 5).flatten(0, 2)
        if self.cfg.tower == "cnn":
            return self.cnn.features(x).reshape(B, t * t, -1)  # one vector per tile, what its classifier read
        h = self.vit.tokens(x)  # (B*t*t, 1 + n_patches, C)
        n_run = self.cfg.feature_layer % (self.cfg.vit.n_layer + 1)  # hidden states: embeddings, layer 1, ..., n
        for layer in self.vit.layers[:n_run]:
            h = layer(h, None)
        if self.cfg.drop_cls and self.vit.cls is not None:
            h = h[:, 1:]  # the patches only: one image token per place in the picture
        return h.reshape(B, -1, h.shape[-1])  # a tile's tokens stay together, tiles in reading order

    def image_prefix(self, images: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, N, decoder n_embd): the image as N token vectors for the decoder."""
        return self.projector(self.vision_features(images))

    def forward(self, images: Tensor, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(logits (B, T, V) of the text positions, cross-entropy where targets != -100, or None)."""
        return self.decoder(idx, targets, prefix=self.image_prefix(images))

    def freeze(self, vision: bool = True, decoder: bool = True) -> VLM:
        """Stop training the image encoder and/or the decoder (LLaVA stage 1: both, so only the projector learns)."""
        self.frozen = {"vision": vision, "decoder": decoder}
        for part, frozen in ((self.tower, vision), (self.decoder, decoder)):
            part.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> VLM:
        """As nn.Module.train, but frozen parts stay in eval mode: no dropout where nothing learns."""
        super().train(mode)
        for part, name in ((self.tower, "vision"), (self.decoder, "decoder")):
            if self.frozen[name]:
                part.eval()
        return self


def caption_targets(ids: Tensor, pad_id: int, prompt_len: int = 1) -> Tensor:
    """ids[:, 1:] with the pads and the rest of the prompt (given, never predicted) set to -100."""
    targets = ids[:, 1:].masked_fill(ids[:, 1:] == pad_id, -100)
    targets[:, :prompt_len - 1] = -100
    return targets


def caption_loss(model: nn.Module, batch: tuple[Tensor, Tensor], prompt_len: int = 1) -> Tensor:
    """The shared fit's objective. batch = (images, ids), ids = prompt caption [eos] pad ..., the prompt [bos] (or
    [bos] and a language tag, prompt_len=2): predict what follows the prompt; pad positions are not predicted."""
    images, ids = batch
    _, loss = model(images, ids[:, :-1], caption_targets(ids, unwrap(model).cfg.pad_id, prompt_len))
    return loss


@torch.no_grad()
def caption(model: VLM, images: Tensor, tok, max_new_tokens: int = 24, num_beams: int = 1,
            batch_size: int = 256, prompt: list[int] | None = None) -> list[str]:
    """Captions of (B, C, S, S) images: greedy (batched) or beam search (num_beams > 1, one image at a time).
    prompt: the ids the caption follows (default [bos]; a bilingual captioner adds its language tag)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    start = torch.tensor(prompt if prompt is not None else [tok.bos_id], dtype=torch.long, device=device)
    out: list[str] = []
    try:
        for a in range(0, len(images), batch_size):
            prefix = model.image_prefix(images[a:a + batch_size].to(device))  # (b, N, C)
            first = start.expand(len(prefix), -1)  # (b, len(prompt))
            if num_beams == 1:
                rows = generate(model.decoder, first, max_new_tokens, prefix=prefix, greedy=True,
                                stop_tokens=[tok.eos_id])
            else:
                rows = [beam_search(model.decoder, first[:1], num_beams, max_new_tokens, stop_tokens=[tok.eos_id],
                                    prefix=prefix[i:i + 1])[0] for i in range(len(prefix))]
            out += [tok.decode(row[len(start):].tolist()) for row in rows]  # decode stops at eos
    finally:
        model.train(was)
    return out


@torch.no_grad()
def caption_attention(model: VLM, image: Tensor, ids: Tensor | list[int], layer: int | None = None) -> Tensor:
    """(T, n_patches): how much each caption position ids[t] (the query that predicts ids[t + 1]) attends to each
    image patch (row-major grid over the whole image), averaged over heads and over the decoder layers (or of one
    `layer`). Raw attention weights: a row sums to the share of attention that went to the image at all. A kept
    [CLS] token is not a place in the image: its weight is spread evenly over the patches of its tile."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        ids = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(1, -1)
        prefix = model.image_prefix(image.reshape(1, *image.shape[-3:]).to(device))  # (1, N, C)
        maps: list[Tensor] = []
        model.decoder.hidden(ids, prefix=prefix, maps=maps)  # (1, nh, N + T, N + T) per layer
    finally:
        model.train(was)
    w = torch.stack(maps if layer is None else [maps[layer]]).mean((0, 2))[0]  # (N + T, N + T)
    N, t, g = prefix.shape[1], model.cfg.tiles, model.cfg.grid
    w = w[N:, :N].float().cpu().unflatten(1, (t * t, -1))  # (T, tiles, tokens per tile)
    n_cls = w.shape[2] - g * g  # 1 when a [CLS] token was kept
    w = w[..., n_cls:] + w[..., :n_cls].sum(-1, keepdim=True) / (g * g)
    # (T, tile row, tile column, patch row, patch column) -> rows of the whole image
    return w.unflatten(1, (t, t)).unflatten(3, (g, g)).permute(0, 1, 3, 2, 4).reshape(len(w), -1)
