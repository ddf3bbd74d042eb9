from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_prune.models import CNN, FCN
from pyro_prune.models.fcn import weight_masks
from pyro_prune.reduction import apply_masks, candidate_masks
from pyro_prune.sparse import (
    SparseLayout,
    compact_tensor,
    export_sparse,
    load_sparse,
    load_sparse_into,
    save_sparse,
    tensor_nbytes,
)


def _sparse_matrix(rows: int, cols: int, sparsity: float, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype)
    k = round(sparsity * w.numel())
    w.view(-1)[torch.randperm(w.numel(), generator=g)[:k]] = 0
    return w


def _pruned(make, r: float, seed: int = 0):
    torch.manual_seed(seed)
    net = make()
    apply_masks(net, candidate_masks(net, r, "magnitude"))
    return net


def _fcn() -> FCN:
    return FCN(64, 10, hidden=(48, 32, 16))


def _cnn() -> CNN:
    return CNN(1, 10, 8, channels=(8, 16), hidden=(32, 24, 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_byte_counts_follow_the_layouts(dtype: torch.dtype) -> None:
    w = _sparse_matrix(30, 50, 0.9, dtype)
    nnz = int((w != 0).sum())
    size = w.element_size()
    assert tensor_nbytes(w) == 1500 * size
    csr = compact_tensor(w, "csr")
    assert csr.layout == torch.sparse_csr and csr.col_indices().dtype == torch.int32
    assert tensor_nbytes(csr) == nnz * (size + 4) + 31 * 4
    coo = compact_tensor(w, "coo")
    assert coo.layout == torch.sparse_coo
    assert tensor_nbytes(coo) == nnz * (size + 2 * 8)
    assert compact_tensor(w, "dense") is w


def test_dense_fallback_when_sparse_would_be_larger() -> None:
    low = _sparse_matrix(40, 40, 0.1)
    assert compact_tensor(low, "csr") is low  # 90 % dense: CSR would need ~2x the bytes
    assert compact_tensor(low, "coo") is low
    mid = _sparse_matrix(40, 40, 0.7)
    assert compact_tensor(mid, "csr").layout == torch.sparse_csr
    assert compact_tensor(mid, "coo") is mid  # COO only pays off below ~20 % density
    ints = torch.zeros(5, 5, dtype=torch.int64)
    assert compact_tensor(ints) is ints  # only floating-point tensors are converted


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 20), sparsity=st.floats(0.0, 1.0),
       layout=st.sampled_from(["csr", "coo"]))
def test_compact_tensor_never_grows_and_round_trips(rows, cols, sparsity, layout) -> None:
    w = _sparse_matrix(rows, cols, sparsity)
    c = compact_tensor(w, layout)
    assert tensor_nbytes(c) <= tensor_nbytes(w)
    back = c.to_dense() if c.layout != torch.strided else c
    assert torch.equal(back.reshape(w.shape), w)


@pytest.mark.parametrize("layout", list(SparseLayout))
@pytest.mark.parametrize("make", [_fcn, _cnn], ids=["fcn", "cnn"])
@pytest.mark.parametrize("r", [0.0, 0.5, 0.9, 0.99])
def test_save_and_load_round_trip(tmp_path, layout, make, r) -> None:
    net = _pruned(make, r)
    path = tmp_path / "model.pt"
    export = save_sparse(net, path, layout)
    state = load_sparse(path)
    own = net.state_dict()
    assert set(state) == {k for k in own if not k.endswith("weight_mask")}
    for key, value in state.items():
        assert value.dtype == own[key].dtype and torch.equal(value, own[key]), key
    # the file itself is an ordinary weights_only checkpoint
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "pyro_prune.sparse/1"
    # into a fresh model: weights and masks come back
    fresh = make()
    load_sparse_into(fresh, path)
    for (key, a), b in zip(own.items(), fresh.state_dict().values()):
        assert torch.equal(a, b), key
    assert export.stored_bytes <= export.dense_bytes


def test_memory_actually_shrinks_with_the_sparsity(tmp_path) -> None:
    sizes = {}
    for r in (0.0, 0.5, 0.9, 0.99):
        net = _pruned(lambda: FCN(256, 10, hidden=(256, 128, 64)), r)  # ~108k weights
        export = export_sparse(net, "csr")
        assert export.dense_bytes == sum(v.numel() * v.element_size() for k, v in net.state_dict().items()
                                         if not k.endswith("weight_mask"))
        assert export.saved_bytes == export.dense_bytes - export.stored_bytes >= 0
        sizes[r] = export.ratio
        dense_file, sparse_file = tmp_path / f"d{r}.pt", tmp_path / f"s{r}.pt"
        save_sparse(net, dense_file, "dense")
        save_sparse(net, sparse_file, "csr")
        overhead = 8192  # zip records, pickled metadata
        assert sparse_file.stat().st_size <= export.stored_bytes + overhead
        assert dense_file.stat().st_size >= export.dense_bytes
        if r >= 0.9:
            assert sparse_file.stat().st_size < 0.3 * dense_file.stat().st_size
    # at 50 % sparsity CSR needs (4 + 4) * n / 2 + row pointers > 4 n bytes: dense fallback
    assert sizes[0.0] == sizes[0.5] == 1.0
    assert sizes[0.5] > sizes[0.9] > sizes[0.99]
    assert sizes[0.9] < 0.25  # ~ (4 + 4) / 4 * 0.1 + row pointers and dense biases
    layouts = {r.name: r.layout for r in export_sparse(_pruned(_fcn, 0.9), "csr").report}
    assert layouts["net.fc1.weight"] == "csr" and layouts["net.fc1.bias"] == "dense"


def test_masks_are_rebuilt_from_the_non_zeros(tmp_path) -> None:
    net = _pruned(_cnn, 0.75)
    save_sparse(net, tmp_path / "m.pt")
    fresh = _cnn()
    load_sparse_into(fresh, tmp_path / "m.pt")
    for name, mask in weight_masks(net).items():
        assert torch.equal(weight_masks(fresh)[name], mask)
    with_masks = export_sparse(net, include_masks=True)
    assert any(k.endswith("weight_mask") for k in with_masks.tensors)


def test_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="layout"):
        export_sparse(_fcn(), "bsr")
    with pytest.raises(TypeError, match="source"):
        export_sparse([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensors"):
        export_sparse({"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="Tensor"):
        tensor_nbytes([1.0])  # type: ignore[arg-type]
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pyro_prune sparse export"):
        load_sparse(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="cannot read"):
        load_sparse(tmp_path / "junk.pt")
    save_sparse(_fcn(), tmp_path / "fcn.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_sparse_into(_cnn(), tmp_path / "fcn.pt")
