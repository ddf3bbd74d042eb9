"""Physically smaller networks from pruned Pyro models (see :mod:`pyro_prune.convert.core`).

* :func:`to_deterministic`, :func:`shrink` — the conversion (:mod:`.core`: slicing planned in
  :mod:`.plan`, gate scales folded by :mod:`.folding`);
* :func:`compression`, :func:`count_params`, :func:`count_macs` — the sizes (:mod:`.counting`);
* :func:`register_layer` — teach the converter (and the whole package) a layer type: one
  slicer per layer type in :mod:`.layers`.
"""

from __future__ import annotations

from pyro_prune.convert.core import shrink, to_deterministic
from pyro_prune.convert.counting import compression, count_macs, count_params
from pyro_prune.convert.folding import ChannelScale
from pyro_prune.convert.layers import (
    LayerRole,
    LayerSlicer,
    layer_slicer,
    layer_widths,
    register_layer,
    registered_layers,
    resize_layers,
)
from pyro_prune.graph import OpKind, UnsupportedOpError, supported_ops

__all__ = [
    "ChannelScale",
    "LayerRole",
    "LayerSlicer",
    "OpKind",
    "UnsupportedOpError",
    "compression",
    "count_macs",
    "count_params",
    "layer_slicer",
    "layer_widths",
    "register_layer",
    "registered_layers",
    "resize_layers",
    "shrink",
    "supported_ops",
    "to_deterministic",
]
