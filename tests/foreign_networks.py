"""Networks the package did not write, and their inputs, for the tests that run them.

Hugging Face transformers from tiny configs with random weights (``transformers`` is imported
when a network is built: a test without it is skipped), and seeded inputs of each kind. A test
module lists its networks with :func:`cases`: name -> (network factory, input factory).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

VOCAB, SEQ, CLASSES = 40, 8, 3

#: a network factory and the factory of its inputs
Case = tuple[Callable[[], nn.Module], Callable[[], Tensor]]


def transformers() -> Any:
    """The ``transformers`` module (the test is skipped without it)."""
    return pytest.importorskip("transformers")


def hf_vit(layers: int = 1, intermediate: int = 24, labels: int = CLASSES) -> nn.Module:
    """``ViTForImageClassification``: 8x8 one-channel images, 4 heads of width 4."""
    tf = transformers()
    return tf.ViTForImageClassification(tf.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=layers,
        num_attention_heads=4, intermediate_size=intermediate, num_labels=labels))


class Logits(nn.Module):
    """A Hugging Face classifier as a network of its token ids that returns its logits."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: Tensor) -> Tensor:
        return self.hf(input_ids=ids).logits


def hf_bert_logits() -> nn.Module:
    """``BertForSequenceClassification`` (eval mode, :class:`Logits`): 50 tokens, width 32, one
    layer of 4 heads and 64 MLP units, 2 labels, sequences of up to 32 tokens."""
    tf = transformers()
    config = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, num_labels=2, max_position_embeddings=32)
    return Logits(tf.BertForSequenceClassification(config).eval())


def hf_gpt2(layers: int = 1) -> nn.Module:
    """``GPT2ForSequenceClassification`` (its ``Conv1D`` layers): 4 heads of width 4."""
    tf = transformers()
    return tf.GPT2ForSequenceClassification(tf.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=layers, n_head=4, n_positions=16, num_labels=CLASSES,
        pad_token_id=0, bos_token_id=1, eos_token_id=1))


def hf_opt(layers: int = 1) -> nn.Module:
    """``OPTForSequenceClassification``: its decoder layers flatten ``[batch, tokens, width]`` to
    ``[batch * tokens, width]`` around their MLP; 4 heads of width 4."""
    tf = transformers()
    return tf.OPTForSequenceClassification(tf.OPTConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=4, ffn_dim=24,
        word_embed_proj_dim=16, max_position_embeddings=16, num_labels=CLASSES, pad_token_id=0))


def hf_mobilevit() -> nn.Module:
    """``MobileViTForImageClassification`` on 32x32 one-channel images: convolutions, then
    transformer blocks over the patches unfolded to ``[batch * patch_area, patches, width]``."""
    tf = transformers()
    return tf.MobileViTForImageClassification(tf.MobileViTConfig(
        image_size=32, patch_size=2, num_channels=1, hidden_sizes=[8, 8, 8],
        neck_hidden_sizes=[4, 4, 8, 8, 8, 8, 16], num_attention_heads=2, num_labels=CLASSES))


class BasicBlock(nn.Module):
    """The residual block of torchvision's ResNet, as written there."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SqueezeExcite(nn.Module):
    """The squeeze-and-excitation layer of Hu et al.'s reference code."""

    def __init__(self, channel: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    """Two convolutions, each followed by a squeeze-and-excitation layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.se1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), SqueezeExcite(16)
        self.conv2, self.bn2, self.se2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), SqueezeExcite(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.se1(torch.relu(self.bn1(self.conv1(x))))
        x = self.se2(torch.relu(self.bn2(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(1)


def token_ids(n: int = 48) -> Tensor:
    """``[n, SEQ]`` token ids in ``1 .. VOCAB - 1`` (0 is the padding id)."""
    return torch.randint(1, VOCAB, (n, SEQ), generator=_generator())


def images(n: int = 48) -> Tensor:
    """``[n, 1, 8, 8]`` standard normal images."""
    return torch.randn(n, 1, 8, 8, generator=_generator())


def large_images(n: int = 48) -> Tensor:
    """``[n, 1, 32, 32]`` standard normal images."""
    return torch.randn(n, 1, 32, 32, generator=_generator())


def sequences(n: int = 48) -> Tensor:
    """``[n, SEQ, 6]`` standard normal feature sequences."""
    return torch.randn(n, SEQ, 6, generator=_generator())


def vectors(n: int = 48) -> Tensor:
    """``[n, 5]`` standard normal vectors."""
    return torch.randn(n, 5, generator=_generator())


def cases(n: int, **entries: tuple[Callable[[], nn.Module], Callable[[int], Tensor]]) -> dict[str, Case]:
    """``name -> (network factory, inputs factory)`` with ``n`` inputs per case."""
    return {name: (make, functools.partial(data, n)) for name, (make, data) in entries.items()}
