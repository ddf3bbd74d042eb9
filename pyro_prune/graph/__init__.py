"""The one structure graph of a network, and the public API the other packages use.

Structures of a model, per gate (:mod:`.structure`):

* :func:`structure_graph` — per gate (:class:`GateInfo`): kind (neuron, channel, head),
  producer, BatchNorms on the way, consumers (all, and the direct ones), the activation after
  it, and whether it can shrink anything;
* :func:`shrinkable_gates` — the gates structure counts count (the others warned about once,
  :func:`warn_cannot_shrink`);
* :func:`producer_module` — the layer holding one weight row per structure of a gate;
* :func:`head_rows` — :func:`structure_rows` of a gate over attention heads, ``{}`` otherwise;
* :func:`structure_rows` — per layer, the structure each output row belongs to (an attention
  head's q, k and v rows).

Tracing (:mod:`.trace`) and inputs (:mod:`.inputs`):

* :func:`module_graph` — trace any network (``torch.fx``, or ``torch.export`` where fx cannot)
  into one graph form: leaf layers as modules, every other op as a function;
  :func:`modes_restored` — every module's train/eval flag restored on exit;
* :func:`net_dtype`, :func:`net_device`, :func:`search_input_shape` — what a network takes.

The dependency analysis the converter, the counters and ``bayesianize`` build on
(:mod:`.analysis`, :mod:`.ops`, :mod:`.removal`, :mod:`.paths`, :mod:`.attention`):

* :func:`dependency_analysis` (cached per model; :func:`cached_analysis` reads the cache) —
  a :class:`DependencyAnalysis`: every node's :class:`Op` (its :class:`OpKind`), channel tags,
  tied groups and pinned groups;
* :func:`removed_channels` — which channel ids the gates' masks remove physically;
  :func:`constant_values`, :func:`constant_columns`, :func:`folded_constants` — the constant a
  removed structure becomes after a map such as ``sigmoid``, per input column of a Linear layer
  that folds it into its bias;
  :func:`run_index_op` — where each output of an index op reads its inputs (positions);
* :func:`producers_after` — the producers a node reaches through the ops a predicate accepts;
  :func:`sole_reader` — the one layer reading a node; :func:`module_returning` — the module
  whose output a node is; :func:`chain_before` — the ops a node reads back to a producer;
  :func:`commutes_with_scale` — ops a positive per-channel scale passes through;
* :func:`attention_heads` — where a gate over attention heads goes;
* :func:`binary_operands`, :func:`pool_any`, :func:`reduce_any` — operands of a two-input op
  and boolean maps through pooling and reductions, for passes over the graph;
* :func:`is_linear`, :data:`SIZED_ATEN_OPS`, :data:`SIZED_METHODS` — feature-axis producers,
  and the index ops whose size arguments a conversion rewrites;
* :func:`supported_ops`, :class:`UnsupportedOpError`;
* the layer registry (:mod:`.layers`): :func:`register_layer`, :func:`layer_slicer`,
  :func:`registered_layers`, :class:`LayerSlicer`, :class:`LayerRole`.
"""

from __future__ import annotations

from pyro_prune.graph.analysis import (
    DependencyAnalysis,
    cached_analysis,
    dependency_analysis,
    run_index_op,
)
from pyro_prune.graph.attention import attention_heads
from pyro_prune.graph.inputs import net_device, net_dtype, search_input_shape
from pyro_prune.graph.layers import (
    LayerRole,
    LayerSlicer,
    layer_slicer,
    register_layer,
    registered_layers,
)
from pyro_prune.graph.ops import (
    SIZED_ATEN_OPS,
    SIZED_METHODS,
    Op,
    OpKind,
    UnsupportedOpError,
    commutes_with_scale,
    is_linear,
    supported_ops,
)
from pyro_prune.graph.paths import chain_before, module_returning, producers_after, sole_reader
from pyro_prune.graph.removal import (
    binary_operands,
    constant_columns,
    constant_values,
    folded_constants,
    pool_any,
    reduce_any,
    removed_channels,
)
from pyro_prune.graph.structure import (
    GateInfo,
    StructureGraph,
    head_rows,
    producer_module,
    shrinkable_gates,
    structure_graph,
    structure_rows,
    warn_cannot_shrink,
)
from pyro_prune.graph.trace import ModuleGraph, modes_restored, module_graph

__all__ = [
    "SIZED_ATEN_OPS", "SIZED_METHODS", "DependencyAnalysis", "GateInfo", "LayerRole", "LayerSlicer",
    "ModuleGraph", "Op", "OpKind", "StructureGraph", "UnsupportedOpError", "attention_heads",
    "binary_operands", "cached_analysis", "chain_before", "commutes_with_scale", "constant_columns",
    "constant_values", "dependency_analysis", "folded_constants", "head_rows", "is_linear",
    "layer_slicer", "modes_restored", "module_graph", "module_returning", "net_device", "net_dtype", "pool_any",
    "producer_module", "producers_after", "reduce_any", "register_layer", "registered_layers",
    "removed_channels", "run_index_op", "search_input_shape", "shrinkable_gates", "sole_reader", "structure_graph",
    "structure_rows", "supported_ops", "warn_cannot_shrink",
]
