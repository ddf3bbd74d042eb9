"""Dimension names of the structures, from the layer each gate selects."""

from __future__ import annotations

import torch
from torch import nn

from pyro_prune import inspect as pa
from pyro_prune.models import ViT, bayesianize


def test_dim_names_follow_the_producer_kind() -> None:
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 6), nn.ReLU(), nn.Linear(6, 3))

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))))

    dims = pa.structure_dims(bayesianize(Small()))
    assert dims == {"bn_gate": "conv_channel", "head_1_gate": "head_1_neuron"}
    vit = ViT(8, 4, 1, 10, dim=8, depth=1, heads=2, mlp_dim=8)
    vdims = pa.structure_dims(vit)
    assert vdims["blocks.0.attn.head_gate"] == "blocks_0_attn_head"
    assert vdims["blocks.0.mlp.fc1_gate"] == "blocks_0_mlp_fc1_neuron"
    assert pa.structure_kind(None, -1) is pa.StructureKind.NEURON
    assert pa.structure_kind(None, 1) is pa.StructureKind.CHANNEL
    assert pa.structure_kind(nn.MultiheadAttention(4, 2)) is pa.StructureKind.HEAD
