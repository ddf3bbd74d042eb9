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
