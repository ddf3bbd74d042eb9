"""Export formats of a converted network: ``torch.export`` (the default), state dict, ONNX, TorchScript.

:data:`EXPORTERS` maps each :class:`ExportFormat` to its writer and file suffix; every
writer writes under a temporary name and renames (a killed export leaves no truncated file).
:func:`~pyro_prune.runs.export_run` exports the network of a run folder.
"""

from __future__ import annotations

import contextlib
import enum
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from pyro_prune._io import (
    atomic_path,
    save_torch,
)
from pyro_prune.run_folder import UsageError

__all__ = [
    "EXPORTERS",
    "export_program",
    "ExportFormat",
]

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings of torch.export, torch.jit and the ONNX exporters."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


class ExportFormat(enum.Enum):
    """``--format`` of ``pyro-prune export``."""

    EXPORTED_PROGRAM = "exported-program"
    STATE_DICT = "state-dict"
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"


def export_program(module: nn.Module, example: Tensor, path: Path) -> Path:
    """``torch.export`` with a free batch dimension, saved with ``torch.export.save`` (.pt2)."""
    batch = torch.export.Dim("batch", min=1)
    if example.shape[0] < 2:  # a batch of 1 would be specialised into the program
        example = example[:1].expand(2, *example.shape[1:])
    with _quiet():
        program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},))
        with atomic_path(path) as tmp:
            torch.export.save(program, str(tmp))
    return path


def _export_torchscript(module: nn.Module, example: Tensor, path: Path) -> Path:
    with _quiet():
        try:
            scripted = torch.jit.script(module)
        except Exception:  # scripting is picky about some generated code; tracing is exact here
            scripted = torch.jit.trace(module, example)
        with atomic_path(path) as tmp:
            scripted.save(str(tmp))
    return path


def _export_state_dict(module: nn.Module, example: Tensor, path: Path) -> Path:
    save_torch(module.state_dict(), path)
    return path


def _export_onnx(module: nn.Module, example: Tensor, path: Path) -> Path:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise UsageError("exporting to ONNX needs the 'onnx' package: pip install 'pyro_prune[onnx]'")
    # the torch.export-based exporter needs onnxscript; the TorchScript-based one nothing more
    dynamo = importlib.util.find_spec("onnxscript") is not None
    with _quiet(), atomic_path(path) as tmp:
        torch.onnx.export(module, (example,), str(tmp), dynamo=dynamo,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


#: format -> (writer, file suffix)
EXPORTERS: dict[ExportFormat, tuple[Callable[[nn.Module, Tensor, Path], Path], str]] = {
    ExportFormat.EXPORTED_PROGRAM: (export_program, ".pt2"),
    ExportFormat.STATE_DICT: (_export_state_dict, ".state_dict.pt"),
    ExportFormat.ONNX: (_export_onnx, ".onnx"),
    ExportFormat.TORCHSCRIPT: (_export_torchscript, ".torchscript.pt"),
}
