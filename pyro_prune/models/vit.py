"""A small Vision Transformer with gates on attention heads and MLP hidden units.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), pre-norm blocks:

    tokens = [cls; patch_embed(x)] + pos_embedding
    x = x + Attention(LayerNorm(x));   x = x + FeedForward(LayerNorm(x))
    logits = head(LayerNorm(x)[:, 0])

Two kinds of structure carry a gate (multiplicative noise by default):

* the hidden units of each block's MLP: ``fc1 -> gate -> GELU -> fc2`` (the gate sits before
  the activation, so ``E[theta]`` folds exactly into ``fc1``);
* the attention heads as whole structures: a gate over the head axis of the per-head
  attention output ``attn @ v`` (shape ``[B, heads, N, head_dim]``), before the heads are
  merged and projected. Removing head ``h`` removes its ``head_dim`` rows of the ``q``, ``k``
  and ``v`` projections and the matching input columns of the output projection.

The attention is written with explicit ``reshape``/``transpose`` and ``-1`` for the head
count, so ``torch.fx`` traces it and the network keeps working when heads are removed
(:mod:`pyro_prune.convert`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune._checks import check_counts
from pyro_prune._enums import parse_enum
from pyro_prune.models.base import Likelihood, PrunableNet
from pyro_prune.models.layers import GateKind, WeightPrior, make_gate, make_linear

__all__ = ["Attention", "FeedForward", "HeadRows", "ViT", "ViTBlock"]


class HeadRows(nn.Module):
    """The incoming weights of each attention head, one row per head (for pruning criteria).

    A view, not part of the forward pass: row ``h`` concatenates the ``head_dim`` rows of
    head ``h`` in the ``q``, ``k`` and ``v`` projections. Its ``row_sources`` are those
    projections, the layers the structure graph finds a head gate's rows in, so the gate's
    ``producer_name`` names this module and weight-based criteria such as the L2 norm score
    whole heads. It holds no parameters of its own.
    """

    def __init__(self, projections: tuple[nn.Module, nn.Module, nn.Module], head_dim: int) -> None:
        super().__init__()
        self._projections: tuple[Any, ...] = tuple(projections)  # plain tuple: not submodules
        self.head_dim = head_dim

    @property
    def row_sources(self) -> tuple[nn.Module, ...]:
        """The layers whose output rows this view groups by head (q, k, v)."""
        return tuple(self._projections)

    def _per_head(self, rows: list[Any]) -> Tensor:
        return torch.cat([r.reshape(r.shape[0] // self.head_dim, -1) for r in rows], dim=1)

    @property
    def weight(self) -> Tensor:
        """``[heads, 3 * head_dim * dim]``: the q, k and v weight rows of every head.

        A detached copy; its ``.grad`` holds the same rows of the projections' gradients
        when they all have one (for gradient-based criteria).
        """
        weights = [p.weight_loc if hasattr(p, "weight_loc") else p.weight for p in self._projections]
        rows = self._per_head([w.detach() for w in weights])
        if all(w.grad is not None for w in weights):
            rows.grad = self._per_head([w.grad for w in weights])  # type: ignore[misc]
        return rows

    @property
    def weight_posterior(self) -> Callable[[], tuple[Tensor, Tensor, float]]:
        """Per-head ``(loc, scale, prior_scale)`` when the projections are Bayesian.

        Raises ``AttributeError`` for point weights, so ``getattr(..., None)`` sees none.
        """
        if not all(callable(getattr(p, "weight_posterior", None)) for p in self._projections):
            raise AttributeError("weight_posterior: the projections have point weights")

        def posterior() -> tuple[Tensor, Tensor, float]:
            posts = [p.weight_posterior() for p in self._projections]
            return (self._per_head([q[0] for q in posts]), self._per_head([q[1] for q in posts]),
                    float(posts[0][2]))

        return posterior


class Attention(nn.Module):
    """Multi-head self-attention with a gate over the heads.

    Args:
        dim: token width; ``dim % heads == 0``.
        heads: number of heads (the gate's structures).
    """

    def __init__(self, dim: int, heads: int, *, weights: WeightPrior = WeightPrior.POINT,
                 gate: GateKind = GateKind.NOISE, prior_scale: float = 1.0,
                 noise_kwargs: dict | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = make_linear(dim, dim, weights, prior_scale=prior_scale)
        self.k = make_linear(dim, dim, weights, prior_scale=prior_scale)
        self.v = make_linear(dim, dim, weights, prior_scale=prior_scale)
        self.head_gate = make_gate(heads, 1, gate, **(noise_kwargs or {}))
        self.proj = make_linear(dim, dim, weights, prior_scale=prior_scale)
        self.heads = HeadRows((self.q, self.k, self.v), self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n = x.shape[0], x.shape[1]
        q = self.q(x).reshape(b, n, -1, self.head_dim).transpose(1, 2)  # [B, H, N, Dh]
        k = self.k(x).reshape(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, n, -1, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, N, N]
        attn = attn.softmax(dim=-1)
        out = self.head_gate(attn @ v)  # gate over the head axis (dim 1)
        out = out.transpose(1, 2).reshape(b, n, -1)  # [B, N, H * Dh]
        return self.proj(out)


class FeedForward(nn.Module):
    """``fc2(GELU(gate(fc1(x))))`` with a gate over the ``mlp_dim`` hidden units."""

    def __init__(self, dim: int, mlp_dim: int, *, weights: WeightPrior = WeightPrior.POINT,
                 gate: GateKind = GateKind.NOISE, prior_scale: float = 1.0,
                 noise_kwargs: dict | None = None) -> None:
        super().__init__()
        self.fc1 = make_linear(dim, mlp_dim, weights, prior_scale=prior_scale)
        self.fc1_gate = make_gate(mlp_dim, -1, gate, **(noise_kwargs or {}))
        self.act = nn.GELU()
        self.fc2 = make_linear(mlp_dim, dim, weights, prior_scale=prior_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1_gate(self.fc1(x))))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, **kw: object) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, **kw)  # type: ignore[arg-type]
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, **kw)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ViTBackbone(nn.Module):
    def __init__(self, image_size: int, patch_size: int, in_channels: int, num_classes: int,
                 dim: int, depth: int, heads: int, mlp_dim: int, *, weights: WeightPrior,
                 gate: GateKind, prior_scale: float, noise_kwargs: dict) -> None:
        super().__init__()
        if weights is WeightPrior.POINT:
            self.patch_embed: nn.Module = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        else:
            from pyro_prune.models.bayesian import BayesianConv2d

            self.patch_embed = BayesianConv2d(in_channels, dim, patch_size, stride=patch_size,
                                              prior_scale=prior_scale)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        kw = {"weights": weights, "gate": gate, "prior_scale": prior_scale, "noise_kwargs": noise_kwargs}
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_dim, **kw) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = make_linear(dim, num_classes, weights, prior_scale=prior_scale)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, dim]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class ViT(PrunableNet):
    """A small Vision Transformer with gates on attention heads and MLP hidden units.

    Module paths: ``patch_embed``, ``cls_token``, ``pos_embedding``,
    ``blocks.<i>.attn.{q,k,v,head_gate,proj}``, ``blocks.<i>.mlp.{fc1,fc1_gate,fc2}``,
    ``norm``, ``head``. The structure graph names the head gate's ``producer_name``
    ``blocks.<i>.attn.heads`` (:class:`HeadRows`: the q/k/v rows of each head) and the MLP
    gate's ``...mlp.fc1``.

    Args:
        image_size: side of the square input images; ``image_size % patch_size == 0``.
        patch_size: side of the square patches (the patch embedding is a strided conv).
        in_channels, num_classes: image channels and classes.
        dim: token width; heads: attention heads per block (``dim % heads == 0``).
        depth: number of blocks; mlp_dim: hidden units of each block's MLP.
        likelihood, weights, gate, prior_scale, num_data, noise_kwargs: as in
            :class:`~pyro_prune.models.MLP`.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        *,
        likelihood: Likelihood | str = Likelihood.CATEGORICAL,
        weights: WeightPrior | str = WeightPrior.POINT,
        gate: GateKind | str = GateKind.NOISE,
        prior_scale: float = 1.0,
        num_data: int | None = None,
        **noise_kwargs: float,
    ) -> None:
        check_counts(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                     num_classes=num_classes, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim)
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        weights_kind = parse_enum(WeightPrior, weights, "weights")
        gate_kind = parse_enum(GateKind, gate, "gate")
        backbone = _ViTBackbone(image_size, patch_size, in_channels, num_classes, dim, depth, heads,
                                mlp_dim, weights=weights_kind, gate=gate_kind,
                                prior_scale=prior_scale, noise_kwargs=dict(noise_kwargs))
        super().__init__(backbone, likelihood=likelihood, num_data=num_data)
        self.record_config((in_channels, image_size, image_size), image_size=image_size,
                           patch_size=patch_size, in_channels=in_channels, num_classes=num_classes,
                           dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
                           likelihood=self.likelihood, weights=weights_kind, gate=gate_kind,
                           prior_scale=prior_scale, **noise_kwargs)
