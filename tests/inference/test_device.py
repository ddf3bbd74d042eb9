"""Device and process-group backend of a run (``--device``): a pure function of what is there."""

from __future__ import annotations

import pytest
import torch

from pyro_prune.inference.distributed import DeviceChoice, select_device


@pytest.mark.parametrize("choice, cuda, world, local_rank, expected", [
    # one process
    ("auto", False, 1, 0, ("cpu", None)),
    ("cpu", False, 1, 0, ("cpu", None)),
    ("auto", True, 1, 0, ("cuda:0", None)),
    ("cuda", True, 1, 0, ("cuda:0", None)),
    ("cpu", True, 1, 0, ("cpu", None)),
    # torchrun: gloo on the CPU, NCCL and one GPU per process (LOCAL_RANK) on CUDA
    ("auto", False, 2, 1, ("cpu", "gloo")),
    ("cpu", True, 4, 3, ("cpu", "gloo")),
    ("auto", True, 2, 1, ("cuda:1", "nccl")),
    ("cuda", True, 4, 3, ("cuda:3", "nccl")),
    (DeviceChoice.CUDA, True, 2, 0, ("cuda:0", "nccl")),
])
def test_device_and_backend(choice, cuda, world, local_rank, expected) -> None:
    device, backend = select_device(choice, cuda_available=cuda, cuda_count=4, world_size=world,
                                    local_rank=local_rank)
    assert (str(device), backend) == expected
    assert isinstance(device, torch.device)


def test_what_cannot_be_chosen_is_named() -> None:
    with pytest.raises(ValueError, match="device 'cuda' asked for, but this torch build sees no CUDA"):
        select_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="LOCAL_RANK=2 has no GPU of its own"):
        select_device("auto", cuda_available=True, cuda_count=2, world_size=4, local_rank=2)
    with pytest.raises(ValueError, match=r"device must be one of \['auto', 'cpu', 'cuda'\], got 'tpu'"):
        select_device("tpu", cuda_available=True)


def test_the_cli_on_this_machine_resolves_as_before() -> None:
    """Without torchrun and without CUDA the command line trains on the CPU, no process group."""
    from pyro_prune.runs import resolve_device

    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
