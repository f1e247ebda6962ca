"""Training a ViT or a CNN on images, and the comparisons of the chapter.

    llmpath vit train                          # preset small: a ViT on mnist-5k
    llmpath vit train --arch=cnn               # the LeNet-style CNN, same data, same epochs
    llmpath vit compare                        # both models, equal epochs and equal seconds, mnist-5k and digits
    llmpath vit ablation                       # patch size, position encoding, depth, augmentation (val accuracy)
    llmpath vit curve                          # test accuracy over training-set fractions: where the gap closes

One run = one model on one data set, in runs/vit/<name>. The pixel mean/std of the training split and the
class names go into every checkpoint (the `tokenizer` slot of the run layer), so `load_run` rebuilds a
classifier that reads raw [0, 1] images. `--budget_s` trains for about that many seconds instead of a number of
epochs: a short timing probe fixes the step count before training, so the learning-rate schedule still knows
its length (warmup shortened to at most a tenth of it; the step count goes into results.json).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor, nn

from llmpath.common import count_params, log, setup_logging
from llmpath.config import RunConfig, TrainConfig, opt, sub
from llmpath.plotting import save_fig, training_curves
from llmpath.runs import comparable_config, reuse, start_run
from llmpath.train import fit, make_optimizer, read_metrics
from llmpath.vit.cnn import CNN, CNNConfig
from llmpath.vit.data import ImageBatches, ImageSet, fraction, load_images, normalize, pixel_stats, split_images
from llmpath.vit.model import ViT, ViTConfig, auto_patch_size, classification_loss

TOPIC = "vit"


@dataclass
class ImageModelConfig:
    arch: Literal["vit", "cnn"] = opt("vit", "vit (Vision Transformer) or cnn (LeNet-style baseline)")
    vit: ViTConfig = sub(ViTConfig)
    cnn: CNNConfig = sub(CNNConfig)


def build_model(cfg: ImageModelConfig) -> nn.Module:
    """The model a run's config describes: `load_run` calls this with the checkpoint's config."""
    return ViT(cfg.vit) if cfg.arch == "vit" else CNN(cfg.cnn)


@dataclass
class ImageRun(RunConfig):
    data: str = opt("mnist-5k", "images: mnist-5k, digits, or a folder with one sub-folder of PNG/JPEG per class")
    image_size: int = opt(0, "resize the images to this side (0 = keep; a folder of mixed sizes needs it)", min=0)
    val: float = opt(0.1, "share of each class held out for validation (model selection)", above=0, below=1)
    test: float = opt(0.2, "share of each class held out for the test", above=0, below=1)
    train_fraction: float = opt(1.0, "train on this stratified share of the training split (learning curve)",
                                above=0, max=1)
    shift: int = opt(2, "augmentation: random shift of up to this many pixels (0 = off)", min=0)
    degrees: float = opt(10.0, "augmentation: random rotation of up to this many degrees (0 = off)", min=0, max=180)
    budget_s: float = opt(0.0, "train for about this many seconds (steps fixed by a timing probe; 0 = use "
                          "--train.epochs / --train.max_steps)", min=0)
    model: ImageModelConfig = sub(ImageModelConfig)
    train: TrainConfig = sub(TrainConfig)


class Normalizer:
    """What a trained classifier needs besides its weights: the pixel scaling and the class names."""

    def __init__(self, mean: float, std: float, classes: list[str]):
        self.mean, self.std, self.classes = mean, std, list(classes)

    def __call__(self, images: Tensor) -> Tensor:
        return normalize(images, self.mean, self.std)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "classes": self.classes}


def normalizer_from_state(state: dict) -> Normalizer:
    return Normalizer(state["mean"], state["std"], state["classes"])


# ------------------------------------------------------------------------------- data

def prepare(cfg: ImageRun) -> tuple[ImageRun, ImageSet, ImageSet, ImageSet]:
    """(cfg with the model's input shape and class count filled in, train, val, test) for a run's data."""
    ds = load_images(cfg.data, size=cfg.image_size)
    train, val, test = split_images(ds, seed=0, val=cfg.val, test=cfg.test)  # one split, whatever --seed says
    train = fraction(train, cfg.train_fraction, seed=cfg.seed)
    C, H, _ = ds.shape
    shape = {"image_size": H, "channels": C, "n_classes": len(ds.classes)}
    patch = cfg.model.vit.patch_size or auto_patch_size(H)
    model = replace(cfg.model, vit=replace(cfg.model.vit, patch_size=patch, **shape), cnn=replace(cfg.model.cnn, **shape))
    if cfg.model.arch == "vit":
        model.vit.check()  # e.g. a patch size that does not divide these images: say so before any work
    return replace(cfg, model=model), train, val, test


def logits_of(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """The model's logits for already-normalised images, in batches on its device, returned on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(x[a:a + batch_size].to(device)).cpu() for a in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, norm: Normalizer, batch_size: int = 500) -> Tensor:
    """Predicted class of every [0, 1] image (eval mode, in batches)."""
    was = model.training
    model.eval()
    out = logits_of(model, norm(images), batch_size).argmax(-1)
    model.train(was)
    return out


def steps_for_budget(model: nn.Module, batches: ImageBatches, cfg: TrainConfig, seconds: float,
                     probe_s: float = 1.0, max_probe: int = 200) -> int:
    """Optimizer steps that take about `seconds` here: time steps of a copy of the model (3 to warm up, then until
    probe_s seconds or max_probe steps have passed)."""
    m = copy.deepcopy(model)
    opt = make_optimizer(m, cfg)
    m.train()
    n, t0 = 0, 0.0
    for i in range(max_probe + 3):
        if i == 3:
            t0 = time.perf_counter()
        loss = classification_loss(m, batches(i))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            n += 1
            if time.perf_counter() - t0 >= probe_s:
                break
    return max(1, round(seconds / ((time.perf_counter() - t0) / n)))


# ------------------------------------------------------------------------------ train

def train_classifier(cfg: ImageRun) -> dict:
    """Train one ViT or CNN with the shared fit (best validation accuracy kept), test it, write results.json."""
    setup_logging()
    if (done := reuse(cfg, TOPIC)) is not None:
        return done
    key = comparable_config(cfg)  # as asked: the input shape and class count are filled in below
    cfg, train, val, test = prepare(cfg)
    stats = pixel_stats(train)
    norm = Normalizer(*stats, train.classes)
    run = start_run(cfg, TOPIC, tokenizer=norm, key=key)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    batches = ImageBatches(train, cfg.train.batch_size, stats, seed=cfg.seed, shift=cfg.shift, degrees=cfg.degrees)
    tcfg = cfg.train
    if cfg.budget_s > 0:
        steps = steps_for_budget(model, batches, tcfg, cfg.budget_s, probe_s=min(1.0, cfg.budget_s / 4))
        # warmup at most a tenth of the run: a short budget still reaches the peak learning rate
        tcfg = replace(tcfg, epochs=0, max_steps=steps, warmup_steps=min(tcfg.warmup_steps, steps // 10))
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)  # the probe trained a copy: start from the same init with a fresh RNG stream
    name = "ViT" if cfg.model.arch == "vit" else "CNN"
    log.info(f"{name} {count_params(model):,} parameters on {cfg.data}: {len(train)} training images "
             f"({cfg.train_fraction:.0%} of the split), {len(val)} val, {len(test)} test -> {run.path}")
    val_x = norm(val.images)

    def evaluate(m: nn.Module) -> dict:
        logits = logits_of(m, val_x)
        return {"val_loss": float(torch.nn.functional.cross_entropy(logits, val.labels)),
                "val_acc": float((logits.argmax(-1) == val.labels).float().mean())}

    res = fit(model, classification_loss, batches, tcfg, run=run, evaluate=evaluate, unit="samples",
              best_metric="val_acc", best_mode="max", restore_best=True)
    pred = predict(model, test.images, norm).numpy()
    y = test.labels.numpy()
    np.savez(run.path / "test_predictions.npz", pred=pred, label=y)
    rows = read_metrics(run.path / "metrics.jsonl")
    curves = save_fig(training_curves(rows, f"{name} on {cfg.data}（{cfg.preset or '自定义'}）"), run.figures / "curves.png")
    summary = {"arch": cfg.model.arch, "data": cfg.data, "params": count_params(model), "train_images": len(train),
               "steps": res.step, "epochs": round(res.step * tcfg.batch_size / len(train), 2),
               "seconds": round(res.seconds, 1), "val_acc": res.best, "test_acc": float(np.mean(pred == y)),
               "test_macro_f1": float(f1_score(y, pred, labels=range(len(train.classes)), average="macro",
                                                zero_division=0)), "budget_s": cfg.budget_s,
               "figures": [curves]}
    summary = run.finish(summary)
    log.info(f"{name} on {cfg.data}: test accuracy {summary['test_acc']:.4f} (val {res.best:.4f}) "
             f"after {res.step} steps in {res.seconds:.0f} s")
    return summary
