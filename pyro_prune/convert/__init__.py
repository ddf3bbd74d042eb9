"""Physically smaller networks from pruned Pyro models (see :mod:`pyro_prune.convert.core`).

* :func:`to_deterministic`, :func:`shrink`, :func:`compression`, :func:`count_params`,
  :func:`count_macs` — the conversion and the sizes (:mod:`.core`);
* :func:`register_layer` — teach the converter (and the whole package) a layer type: one
  slicer per layer type in :mod:`.layers`.
"""

from __future__ import annotations

from pyro_prune.convert.core import (
    _CACHE,
    ChannelScale,
    OpKind,
    UnsupportedOpError,
    _analysis,
    compression,
    count_macs,
    count_params,
    shrink,
    supported_ops,
    to_deterministic,
)
from pyro_prune.convert.layers import (
    LayerRole,
    LayerSlicer,
    layer_slicer,
    layer_widths,
    register_layer,
    registered_layers,
    resize_layers,
)

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
_ = (_CACHE, _analysis)  # re-exported for the tests
