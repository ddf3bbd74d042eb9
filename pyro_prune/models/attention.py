"""``nn.MultiheadAttention`` with its projections as layers, so its heads can be gated.

``nn.MultiheadAttention`` computes with raw parameters (one ``in_proj_weight`` for q, k and
v) inside ``F.multi_head_attention_forward``: there is no layer whose output rows are a
head's q, k or v rows, so neither a gate nor the structure graph can see its heads.
:class:`ProjectedMultiheadAttention` is the same computation with ``q_proj``, ``k_proj``,
``v_proj`` and ``out_proj`` as ``nn.Linear`` layers and ``F.scaled_dot_product_attention``
in between: same arguments, same outputs (to float rounding), same state of the weights.
:func:`~pyro_prune.models.bayesianize` swaps it in for every ``nn.MultiheadAttention``
(inside ``nn.TransformerEncoderLayer`` too), puts a gate over its heads and the converter
slices whole heads out of the four projections. The heads axis is written ``-1`` in its
reshapes, so a converted copy with fewer heads runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProjectedMultiheadAttention", "project_attention"]


class ProjectedMultiheadAttention(nn.Module):
    """Multi-head attention with separate q, k, v and output projections.

    Built from an ``nn.MultiheadAttention`` (:meth:`from_attention`, which copies its
    weights); ``forward`` takes the same arguments and returns ``(output, None)``
    (attention weights are not computed: ``need_weights`` must be False or is ignored
    with ``average_attn_weights``).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None,
                 vdim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        # what nn.TransformerEncoderLayer reads before choosing its fused fast path: no
        # fused in_proj here, so it always takes the path that calls this module
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.in_proj_bias = None

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention) -> ProjectedMultiheadAttention:
        """The same attention as ``mha`` (its weights copied, its train/eval mode kept)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be an nn.MultiheadAttention, got {type(mha).__name__}")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
        ref = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim,
                  bias=mha.in_proj_bias is not None, dropout=mha.dropout, batch_first=mha.batch_first,
                  device=ref.device, dtype=ref.dtype)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                assert mha.in_proj_weight is not None
                weights = mha.in_proj_weight.split(e)
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            biases = mha.in_proj_bias.split(e) if mha.in_proj_bias is not None else (None,) * 3
            for layer, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Tensor, None]:
        batched = query.dim() == 3
        if not batched:  # [L, E] -> [1, L, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        d = self.head_dim
        q = self.q_proj(query).unflatten(-1, (-1, d)).transpose(1, 2)  # [N, H, L, d]
        k = self.k_proj(key).unflatten(-1, (-1, d)).transpose(1, 2)
        v = self.v_proj(value).unflatten(-1, (-1, d)).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, q.dtype, self.num_heads)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=bool(is_causal) and mask is None)
        out = self.out_proj(out.transpose(1, 2).flatten(-2))  # [N, L, E]
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _additive_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                   dtype: torch.dtype, heads: int) -> Tensor | None:
    """``nn.MultiheadAttention``'s masks (True or -inf: not attended) as one additive mask
    broadcasting over ``[N, H, L, S]``."""
    out: Tensor | None = None
    for m, view in ((attn_mask, None), (key_padding_mask, "keys")):
        if m is None:
            continue
        f = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
        if view == "keys":
            f = f[:, None, None, :]  # [N, S] -> [N, 1, 1, S]
        elif f.dim() == 3:  # [N * heads, L, S]
            f = f.unflatten(0, (-1, heads))
        out = f if out is None else out + f
    return out


def project_attention(module: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` inside ``module`` by its
    :class:`ProjectedMultiheadAttention` (in place); returns how many were replaced.

    ``nn.TransformerEncoder``\\ s holding one stop choosing their fused nested-tensor path.
    """
    if isinstance(module, nn.MultiheadAttention):
        raise TypeError("module is an nn.MultiheadAttention itself; wrap it in the network that uses it")
    swapped = 0
    for name, m in list(module.named_modules()):
        if type(m) is not nn.MultiheadAttention or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, ProjectedMultiheadAttention.from_attention(m))
        swapped += 1
    if swapped:
        for m in module.modules():
            if isinstance(m, nn.TransformerEncoder):
                m.use_nested_tensor = False
    return swapped
