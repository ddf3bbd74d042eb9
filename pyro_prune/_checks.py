"""Argument checks shared by the public entry points, with one style of message for all.

Every check names the argument, what was expected and what was found, and raises
``TypeError`` (wrong kind of object) or ``ValueError`` (right kind, bad value). The entry
points (:func:`~pyro_prune.inference.fit`, :func:`~pyro_prune.inference.evaluate`,
:func:`~pyro_prune.inspect.to_inference_data`, the CLI, ...) call these instead of checking
inline, so a rule is written once.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "SEED_MAX",
    "as_dataset",
    "check_bool",
    "check_count",
    "check_counts",
    "check_dataset",
    "check_guide",
    "check_inputs",
    "check_int",
    "check_model_data",
    "check_number",
    "check_output_dir",
    "check_output_file",
    "check_seed",
    "data_fingerprint",
]

#: seeds must fit NumPy's ``RandomState`` (and torch's generator): ``0 <= seed <= SEED_MAX``
SEED_MAX = 2**32 - 1


# ============================================================================ scalars
def check_bool(value: object, arg: str) -> bool:
    """``value`` as a ``bool`` (``True`` / ``False`` only: not ``0``, ``1`` or ``"yes"``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{arg} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return value


def check_int(value: object, arg: str, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (``bool`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "" if minimum is None else f"{minimum} <= "
        high = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{arg} must be an int with {low}{arg}{high}, got {value!r}")
    return value


def check_count(value: object, arg: str, *, minimum: int = 1, or_none: bool = False) -> int:
    """``value`` as a count, an ``int >= minimum``, with the one wording of counts in the package.

    Raises ``ValueError`` for anything else (a float or a bool too): ``"<arg> must be a
    positive int, got ..."`` (``"an int >= <minimum>"`` for another minimum; ``"... or None"``
    with ``or_none``, for arguments where the caller accepts ``None`` before checking).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{arg} must be {what}{' or None' if or_none else ''}, got {value!r}")
    return value


def check_counts(**values: object) -> None:
    """:func:`check_count` of every keyword argument, named by its keyword, in order."""
    for arg, value in values.items():
        check_count(value, arg)


def check_inputs(data: Any, arg: str = "data") -> Tensor:
    """The input tensor of ``data``: a Tensor, or the inputs of a ``TensorDataset`` or of an
    ``(inputs, targets)`` pair (:func:`as_dataset`)."""
    if isinstance(data, (tuple, list)):
        data = as_dataset(data, arg, tensors_only=True)
    if isinstance(data, TensorDataset):
        data = data.tensors[0]
    if not isinstance(data, Tensor):
        raise TypeError(f"{arg} must be a Tensor of inputs, a TensorDataset or an (inputs, targets) "
                        f"pair of tensors, got {type(data).__name__}")
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(f"{arg} is empty")
    return data


def check_seed(value: object, arg: str = "seed") -> int:
    """A seed usable by torch, Pyro and NumPy: an int in ``[0, 2**32 - 1]``."""
    return check_int(value, arg, minimum=0, maximum=SEED_MAX)


def check_number(value: object, arg: str, *, minimum: float | None = None,
                 positive: bool = False) -> float:
    """``value`` as a finite ``float`` (``> 0`` with ``positive``, ``>= minimum`` with it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if not (isinstance(value, Tensor) and value.numel() == 1):
            raise TypeError(f"{arg} must be a number, got {type(value).__name__} {value!r}")
        value = value.item()
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"{arg} must be a finite number, got {value!r}")
    if positive and not number > 0:
        raise ValueError(f"{arg} must be a positive finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{arg} must be a finite number >= {minimum}, got {value!r}")
    return number


# ============================================================================ data
#: how the package names the forms a data set may take (the messages of :func:`as_dataset`)
DATA_FORMS = "a torch Dataset, IterableDataset or DataLoader, or an (inputs, targets) pair of tensors"
TENSOR_FORMS = "a TensorDataset(inputs, targets) or an (inputs, targets) pair of tensors"


def _pair_dataset(pair: tuple[Any, ...] | list[Any], arg: str) -> TensorDataset:
    """``TensorDataset(inputs, targets)`` of a tuple or list of two tensors, or the error
    naming what is wrong with it."""
    kind = type(pair).__name__
    if len(pair) != 2:
        if len(pair) == 1 and isinstance(pair[0], Tensor):
            raise ValueError(f"{arg} is a {kind} of one tensor, inputs without targets: give "
                             f"(inputs, targets)")
        if len(pair) == 1 and isinstance(pair[0], (tuple, list)):
            raise ValueError(f"{arg} is a {kind} holding one {type(pair[0]).__name__}: give the pair "
                             f"(inputs, targets) itself")
        items = "one item" if len(pair) == 1 else f"{len(pair)} items"
        raise ValueError(f"{arg} is a {kind} of {items}: give two tensors, (inputs, targets)")
    for i, part in enumerate(pair):
        if isinstance(part, (tuple, list)):
            raise TypeError(f"{arg}[{i}] is a {type(part).__name__}, not a tensor: a {kind} of examples "
                            f"is not read; stack them into two tensors, (inputs, targets)")
        if not isinstance(part, Tensor):
            raise TypeError(f"{arg}[{i}] is a {type(part).__name__}, not a torch Tensor: give "
                            f"(inputs, targets) as tensors (torch.as_tensor converts an array)")
        if part.dim() == 0:
            raise ValueError(f"{arg}[{i}] is a 0-dimensional tensor: the first dimension of inputs "
                             f"and targets counts the examples")
    x, y = pair
    if len(x) != len(y):
        raise ValueError(f"{arg}: {len(x)} inputs but {len(y)} targets (the first dimension of "
                         f"both tensors counts the examples)")
    return TensorDataset(x, y)


def as_dataset(data: Any, arg: str, *, tensors_only: bool = False) -> Any:
    """``data`` in a form the package reads, for every public function that takes data.

    A tuple or list of two tensors ``(inputs, targets)`` with the same first dimension becomes
    ``TensorDataset(inputs, targets)`` (the same tensors, not copied); a torch ``Dataset``,
    ``IterableDataset`` or ``DataLoader`` is returned as it is. Anything else is an error
    naming ``arg`` and what is wrong: a lone tensor (inputs without targets), a pair of
    unequal lengths, of something other than tensors, of more or fewer than two items. With
    ``tensors_only`` (functions that read all the data at once) only a ``TensorDataset`` or
    a pair is accepted.
    """
    if isinstance(data, (tuple, list)):
        return _pair_dataset(data, arg)
    if isinstance(data, Tensor):
        raise TypeError(f"{arg} is a single tensor, inputs without targets: give (inputs, targets), "
                        f"a pair of tensors with the same first dimension")
    if isinstance(data, TensorDataset) or (not tensors_only and isinstance(data, (Dataset, DataLoader))):
        return data
    forms = TENSOR_FORMS if tensors_only else DATA_FORMS
    raise TypeError(f"{arg} must be {forms}, got {type(data).__name__}")


def check_dataset(dataset: Any, arg: str) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of a non-empty ``TensorDataset`` (or ``(inputs, targets)`` pair,
    :func:`as_dataset`) with finite real inputs (or integer token ids)."""
    dataset = as_dataset(dataset, arg, tensors_only=True)
    if len(dataset.tensors) != 2:
        raise TypeError(f"{arg} must be a TensorDataset of (inputs, targets), got one of "
                        f"{len(dataset.tensors)} tensors")
    x, y = dataset.tensors
    if len(x) == 0:
        raise ValueError(f"{arg} is empty")
    if len(x) != len(y):
        raise ValueError(f"{arg}: {len(x)} inputs but {len(y)} targets")
    if not x.is_floating_point() and x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{arg} inputs must be a floating-point tensor (or int64 token ids), "
                         f"found dtype={x.dtype}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{arg} inputs contain NaN or infinite values")
    if y.is_complex() or (y.is_floating_point() and not bool(torch.isfinite(y).all())):
        raise ValueError(f"{arg} targets contain NaN or infinite values")
    return x, y


def _model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_model_data(model: Any, x: Tensor, y: Tensor | None, arg: str) -> None:
    """Check that ``x`` (and ``y``) fit ``model``, by one forward pass on two examples.

    Inputs: the model's floating dtype and a shape its backbone accepts. Targets of a
    categorical model: int64 labels of shape ``[N]`` in ``0 .. C-1`` (``C`` the number of
    outputs; ``-100``, cross-entropy's "ignore" label, is refused too), or, for outputs
    ``[N, T, ..., C]`` (a language model's logits), token labels of shape ``[N, T, ...]``,
    which may also be the model's ``ignore_index`` (``-100``: a token that does not count),
    though not all of them. Targets of a gaussian
    model: float of shape ``[N, D]`` with ``D`` the number of outputs (nothing broadcasts).
    """
    from pyro_prune.models.base import Likelihood

    ids = getattr(model, "input_dtype", None)  # a model reading token ids (bayesianize sets it)
    if isinstance(ids, torch.dtype) and not ids.is_floating_point:
        if x.dtype != ids:
            raise ValueError(f"{arg} inputs must be token ids of dtype {ids}, found {x.dtype}")
    elif not x.is_floating_point():
        raise ValueError(f"{arg} inputs must be a floating-point tensor, found dtype={x.dtype}")
    dtype = _model_dtype(model)
    if x.is_floating_point() and dtype is not None and x.dtype != dtype:
        raise ValueError(f"{arg} inputs must have the model's dtype {dtype}, found {x.dtype}")
    was_training = model.training
    model.eval()  # batch norm must not learn from the probe
    try:
        out = model.predict(x[:2])
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"{arg} inputs of shape {tuple(x.shape)} (one example {tuple(x.shape[1:])}) do not "
            f"fit the model: {detail}"
        ) from None
    finally:
        model.train(was_training)
    if y is None:
        return
    width = int(out.shape[-1])
    if model.likelihood is Likelihood.CATEGORICAL:
        tokens = tuple(out.shape[1:-1])  # the token axes of a language model's logits
        if y.dtype != torch.int64 or tuple(y.shape[1:]) not in {(), tokens}:
            token_form = f" or token labels of shape [N, {', '.join(map(str, tokens))}]" if tokens else ""
            hint = ""
            if y.is_floating_point():
                hint = ("; for regression targets build the model with likelihood=\"gaussian\" "
                        "(e.g. MLP(..., likelihood=\"gaussian\"), bayesianize(net, likelihood=\"gaussian\"))")
            raise ValueError(
                f"{arg}: a categorical model needs integer class labels of dtype torch.int64 and "
                f"shape [N]{token_form}, found dtype={y.dtype} shape={tuple(y.shape)} (the "
                f"model's outputs on two examples have shape {tuple(out.shape)}){hint}"
            )
        if y.dim() == 1 and tokens:
            raise ValueError(
                f"{arg}: the model's outputs on two examples have shape {tuple(out.shape)}, one "
                f"distribution per token: it needs token labels of shape [N, "
                f"{', '.join(map(str, tokens))}], found shape={tuple(y.shape)}"
            )
        labels = y
        if y.dim() > 1:  # token labels: the ignore label marks tokens that do not count
            ignore = int(getattr(model, "ignore_index", -100))
            labels = y[y != ignore]
            if labels.numel() == 0:
                raise ValueError(f"{arg}: every token label is the ignore label {ignore} (ignore_index): "
                                 f"there is nothing to learn from")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= width:
            raise ValueError(
                f"{arg}: class labels must lie in 0..{width - 1} (the model has {width} "
                f"outputs; token labels may also be the ignore label), found labels from {low} to {high}"
            )
    else:
        if not y.is_floating_point() or y.dim() != 2 or y.shape[1] != width:
            hint = ""
            if not y.is_floating_point():
                hint = "; for class labels build the model with likelihood=\"categorical\" (the default)"
            elif y.dim() == 1 and width == 1:
                hint = "; give the targets as y[:, None]"
            raise ValueError(
                f"{arg}: a gaussian model with {width} outputs needs float targets of shape "
                f"[N, {width}], found dtype={y.dtype} shape={tuple(y.shape)}{hint}"
            )


def data_fingerprint(*tensors: Tensor) -> str:
    """A short hash of the tensors' shapes, dtypes and bytes (resuming checks it)."""
    h = hashlib.blake2b(digest_size=12)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ============================================================================ guides
def _site_names(fn: Callable, x: Tensor, y: Tensor | None, *, latent_only: bool) -> set[str]:
    import pyro
    from pyro.poutine.util import site_is_subsample

    with torch.no_grad():
        trace = pyro.poutine.trace(fn).get_trace(x, y)
    return {name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
            and not (latent_only and site["is_observed"])
            and not (site.get("infer") or {}).get("is_auxiliary", False)}


def _wrapped_module(fn: Any, depth: int = 6) -> torch.nn.Module | None:
    """The module under an autoguide's ``model`` (Pyro wraps it in handlers and partials)."""
    if isinstance(fn, torch.nn.Module) or fn is None or depth == 0:
        return fn
    for inner in (getattr(fn, "func", None), getattr(fn, "fn", None),
                  getattr(fn, "__wrapped__", None), *getattr(fn, "args", ())):
        found = _wrapped_module(inner, depth - 1) if inner is not None else None
        if found is not None:
            return found
    return None


def check_guide(model: Any, guide: Any, x: Tensor | None, y: Tensor | None,
                arg: str = "guide") -> None:
    """Check that ``guide`` is a guide of ``model``: not another network's, same latent sites.

    A bound method of another module (``b.guide`` passed with model ``a``) and an autoguide
    built on another model are refused; otherwise the guide's sample sites must be exactly
    the model's latent sites (run once on two examples ``x``, ``y``; skipped without ``x``).
    """
    if not callable(guide):
        raise TypeError(f"{arg} must be callable, got {type(guide).__name__}")
    owner = getattr(guide, "__self__", None)
    if isinstance(owner, torch.nn.Module) and owner is not model:
        raise ValueError(
            f"{arg} is the guide of another {type(owner).__name__} object, not of this model: "
            f"pass that model, or this model's own guide"
        )
    guided = _wrapped_module(getattr(guide, "model", None))
    if guided is not None and guided is not model:
        raise ValueError(f"{arg} is an autoguide built on another {type(guided).__name__} object, "
                         f"not on this model")
    if x is None:
        return
    training = getattr(model, "training", None)
    if isinstance(model, torch.nn.Module):
        model.train()  # the sites SVI fits: a model left in eval mode samples no noise
    try:
        model_sites = _site_names(model, x, y, latent_only=True)
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(bool(training))
    try:
        guide_sites = _site_names(guide, x, y, latent_only=False)
    except Exception as err:  # a guide of another architecture fails in its own way
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{arg} cannot run on this model's inputs: {detail}") from None
    missing, extra = sorted(model_sites - guide_sites), sorted(guide_sites - model_sites)
    if missing or extra:
        raise ValueError(
            f"{arg} does not match the model's latent sites: the model has {missing[:5]} that the "
            f"guide lacks, the guide has {extra[:5]} that the model lacks"
        )


# ============================================================================ paths
def check_output_dir(path: str | os.PathLike[str], arg: str) -> Path:
    """Create the folder ``path`` if needed; an error naming ``arg`` if it cannot be written."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == path else f"lies under {parent}, which is"
            raise ValueError(f"{arg} {str(path)!r} {where} a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{arg} {str(path)!r} cannot be created: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{arg} {str(path)!r} is not writable")
    return path


def check_output_file(path: str | os.PathLike[str], arg: str) -> Path:
    """``path`` as a file to (re)write: not a folder, its folder created and writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{arg} {str(path)!r} is a folder; give a file name")
    check_output_dir(path.parent, f"the folder of {arg}")
    return path
