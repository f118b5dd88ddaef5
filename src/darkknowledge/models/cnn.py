"""A small LeNet-style convolutional net: a teacher stronger than any MLP on images."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from darkknowledge.errors import DKError, short
from darkknowledge.models.base import models
from darkknowledge.models.mlp import MAX_LAYERS, dropout


@models.register("cnn")
@dataclass(frozen=True)
class CNNSpec:
    """Convolutional net: per entry of ``channels`` a ``kernel``×``kernel`` convolution (no
    padding), ReLU and 2×2 max-pooling; then fully connected ReLU layers ``hidden``; then the
    classes.

    The inputs stay flat vectors, as every dataset gives them; the net reads each as an image of
    ``image`` = [channels, height, width] (null: one channel, square). The fully connected part
    is ``layers`` (``layers.0`` is the first hidden layer, as in an MLP, so a method reading
    features names it the same way); the convolutions are ``convs.0``, ``convs.1``, ...

    Attributes:
        channels: output channels of each convolution (LeNet's shape: [32, 64]).
        kernel: side of every convolution's square kernel.
        hidden: units per fully connected hidden layer.
        hidden_dropout: dropout probability on every fully connected hidden layer.
        image: [channels, height, width] of one input; null = one channel, square.
    """

    registered_name: ClassVar[str] = "cnn"
    batchable: ClassVar[bool] = False  # replicas train MLPs only (models/batched.py)
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel: int = 5
    hidden: list[int] = field(default_factory=lambda: [512])
    hidden_dropout: float = 0.0
    image: list[int] | None = None

    def __post_init__(self) -> None:
        for key, example in (("channels", "[32, 64]"), ("hidden", "[512]")):
            widths = getattr(self, key)
            if len(widths) > MAX_LAYERS:
                raise DKError(
                    f"model.{key} has {len(widths):,} layers, more than {MAX_LAYERS}",
                    f"give a short list of widths, e.g. {example}",
                )
            if not widths or any(int(w) < 1 for w in widths):
                raise DKError(
                    f"model.{key}={short(widths)} is invalid",
                    f"give a list of positive widths, e.g. {example}",
                )
        if not 1 <= self.kernel <= 64:
            raise DKError(f"model.kernel={self.kernel} is out of range", "use 1 to 64, e.g. 5")
        if not 0.0 <= self.hidden_dropout < 1.0:
            raise DKError(
                f"model.hidden_dropout={self.hidden_dropout} is out of range",
                "use a dropout probability in [0, 1)",
            )
        if self.image is not None and (len(self.image) != 3 or any(int(s) < 1 for s in self.image)):
            raise DKError(
                f"model.image={short(self.image)} is invalid",
                "give [channels, height, width] of one input, e.g. [1, 28, 28], or null",
            )

    def shapes(self, in_features: int) -> list[tuple[int, int, int]]:
        """(channels, height, width) of the input and after each convolution + pooling."""
        if self.image is not None:
            c, h, w = (int(s) for s in self.image)
        else:
            c, h = 1, math.isqrt(in_features)
            w = h
        if c * h * w != in_features:
            raise DKError(
                f"the inputs have {in_features} features, which "
                + (
                    f"model.image={list(self.image)} does not match"
                    if self.image is not None
                    else "is not one square image"
                ),
                "set model.image to [channels, height, width] of one input, e.g. [1, 28, 56]",
            )
        out = [(c, h, w)]
        for ch in self.channels:
            h, w = (h - self.kernel + 1) // 2, (w - self.kernel + 1) // 2
            if h < 1 or w < 1:
                raise DKError(
                    f"a {out[0][1]}×{out[0][2]} input is too small for {len(self.channels)} "
                    f"convolutions of {self.kernel}×{self.kernel} each followed by 2×2 pooling",
                    "use fewer model.channels or a smaller model.kernel",
                )
            out.append((int(ch), h, w))
        return out

    def parameter_count(self, in_features: int, num_classes: int) -> int:
        """How many parameters ``build`` would allocate (checked before it does)."""
        shapes = self.shapes(in_features)
        k2 = self.kernel * self.kernel
        convs = sum((a[0] * k2 + 1) * b[0] for a, b in zip(shapes[:-1], shapes[1:], strict=True))
        widths = [math.prod(shapes[-1]), *[int(h) for h in self.hidden], num_classes]
        return convs + sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:], strict=True))

    def build(self, in_features: int, num_classes: int) -> CNN:
        return CNN(self, in_features, num_classes)


class CNN(nn.Module):
    """The convolutional net of :class:`CNNSpec`; dropout is inverted (eval mode: no scaling)."""

    def __init__(self, spec: CNNSpec, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.in_features = in_features
        self.num_classes = num_classes
        shapes = spec.shapes(in_features)
        self.image = shapes[0]
        self.convs = nn.ModuleList(
            nn.Conv2d(a[0], b[0], spec.kernel) for a, b in zip(shapes[:-1], shapes[1:], strict=True)
        )
        widths = [math.prod(shapes[-1]), *[int(h) for h in spec.hidden], num_classes]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_features) → logits (batch, classes)."""
        x = x.reshape(x.shape[0], *self.image)
        for conv in self.convs:
            x = torch.max_pool2d(torch.relu(conv(x)), 2)
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = dropout(torch.relu(layer(x)), self.spec.hidden_dropout, self.training)
        return self.layers[-1](x)
