"""The one structure graph of a network (see :mod:`.trace` and :mod:`.structure`).

* :func:`module_graph` — trace any network (``torch.fx``, or ``torch.export`` where fx cannot)
  into one graph form: leaf layers as modules, every other op as a function;
* :func:`structure_graph` — per gate: kind (neuron, channel, head), producer, consumers,
  the activation after it, and whether it can shrink anything.
"""

from __future__ import annotations

from pyro_prune.graph.structure import GateInfo, StructureGraph, structure_graph, warn_cannot_shrink
from pyro_prune.graph.trace import ModuleGraph, modes_restored, module_graph

__all__ = ["GateInfo", "ModuleGraph", "StructureGraph", "modes_restored", "module_graph",
           "structure_graph", "warn_cannot_shrink"]
