"""The baseline: a LeNet-style convolutional network (LeCun et al. 1998), conv-pool-conv-pool-MLP.

A convolution slides one small filter over every position (translation equivariance and locality are
built in); max-pooling keeps the strongest response in each 2x2 window (a little invariance to shifts).
These two assumptions are what the ViT has to learn from data, and why the CNN wins on 5,000 digits.

    (B, C, H, W) -conv k x k, c1, pad k//2-> ReLU -> maxpool 2 -conv k x k, c2, pad k//2-> ReLU -> maxpool 2
                 -> flatten -> Linear(hidden) -> ReLU -> Linear(n_classes)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from llmpath.config import ConfigError, opt


@dataclass
class CNNConfig:
    image_size: int = opt(28, "height and width of the input images", min=4)
    channels: int = opt(1, "input channels", min=1)
    n_classes: int = opt(10, "classes (set from the data)", min=2)
    c1: int = opt(16, "filters of the first convolution", min=1)
    c2: int = opt(32, "filters of the second convolution", min=1)
    kernel: int = opt(5, "convolution kernel size (odd: 'same' padding keeps the size)", min=1)
    hidden: int = opt(64, "width of the MLP after the convolutions", min=1)
    dropout: float = opt(0.0, "dropout before the last layer", min=0, below=1)

    def check(self) -> None:
        if self.kernel % 2 == 0:
            raise ConfigError(f"--kernel={self.kernel} must be odd so that 'same' padding keeps the image size")


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(cfg.channels, cfg.c1, cfg.kernel, padding=cfg.kernel // 2)
        self.conv2 = nn.Conv2d(cfg.c1, cfg.c2, cfg.kernel, padding=cfg.kernel // 2)
        side = cfg.image_size // 4  # two 2x2 poolings (floor, as max_pool2d does)
        self.fc1 = nn.Linear(cfg.c2 * side * side, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.n_classes)
        self.drop = nn.Dropout(cfg.dropout)

    def feature_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two ReLU'd convolution outputs before pooling: (B, c1, H, W) and (B, c2, H/2, W/2)."""
        a1 = F.relu(self.conv1(x))
        a2 = F.relu(self.conv2(F.max_pool2d(a1, 2)))
        return a1, a2

    def features(self, x: Tensor) -> Tensor:
        """(B, hidden): the last hidden layer, what the classifier reads (stage 13's captioner reads it too)."""
        _, a2 = self.feature_maps(x)
        h = F.max_pool2d(a2, 2).flatten(1)  # (B, c2 * side * side)
        return F.relu(self.fc1(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.features(x)))
