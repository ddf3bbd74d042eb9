r"""Laplace evidence of a deterministic network, and threshold-free BMR from it.

For a network at its MAP weights :math:`w^*` under the isotropic prior
:math:`\mathcal N(0, s^2 I)` over its :math:`d` trainable parameters, with :math:`H` the
generalised Gauss-Newton matrix (GGN) of the negative log likelihood at :math:`w^*` and
:math:`P = H + I/s^2` the posterior precision, the Laplace approximation of the log
marginal likelihood (the *evidence*) is

.. math::

    \log p(D) \approx \log p(D \mid w^*) + \log \mathcal N(w^*; 0, s^2 I)
        + \tfrac d2 \log 2\pi - \tfrac12 \log\det P .

Everything after the likelihood is the log *Occam factor*: the prior volume the data rule
out. For a linear model with a Gaussian likelihood the GGN is the Hessian, the posterior
is Gaussian and the formula is exact (tested against the closed-form Bayesian
linear-regression evidence). A *pruned* model fixes some weights at 0: they leave the
parameter vector, so their rows and columns of :math:`P`, their prior terms and their
:math:`\tfrac12\log 2\pi` go, and the curvature is evaluated at the pruned weights
(re-linearised there). The Bayes factor of a pruning is the difference of the two log
evidences.

Likelihoods: ``"categorical"`` (the network outputs logits; :math:`H` is the GGN of the
softmax cross-entropy, which equals the exact Fisher) and ``"gaussian"`` (the network
outputs means, :math:`y \sim \mathcal N(f(x), \sigma^2 I)`; :math:`H = J^\top J/\sigma^2`).

Structure of :math:`H` (:class:`HessianStructure`): ``"diag"`` (its diagonal),
``"kron"`` (Kronecker factors per ``nn.Linear`` / ``nn.Conv2d`` weight, K-FAC; the biases
and normalisation layers keep their own block / diagonal) and ``"full"`` (the whole
matrix, for small networks). ``log det P`` is a sum of :math:`\log(\lambda_i/\sigma^2 +
1/s^2)` over the eigenvalues :math:`\lambda_i` of the unit-noise curvature: for the
diagonal they are its entries, for a Kronecker block :math:`B \otimes A / N` the products
of the factors' eigenvalues, for the full matrix its eigenvalues. So the evidence is a
closed-form function of :math:`(s, \sigma)` once the curvature is computed, which is how
:func:`fit_evidence` maximises it over the prior scale (and the observation noise).

Curvature backend: ASDL (``asdfghjkl``, Osawa et al.), the curvature library that
laplace-torch uses as one of its backends. laplace-torch itself, BackPACK and curvlinops
all declare a dependency on torchvision, which this package does not allow, while ASDL
needs only torch and numpy; the evidence formulas above are a dozen lines on top of the
curvature and are checked against closed forms in the tests. ASDL handles
``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm1d/2d``, ``nn.LayerNorm`` and ``nn.Embedding``;
a network with trainable parameters in any other kind of module is refused with an error
naming the module (:data:`SUPPORTED_LAYERS`). A non-finite curvature entry is reported
(``FloatingPointError`` naming the parameter), never clamped.

The MAP caveat: the weights passed in are taken as the mode. For a pruned model the kept
weights are the unpruned model's (not refitted), so its evidence is the Laplace evidence
around that point; the gradient term this ignores is second order in the change.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._checks import check_dataset, check_number
from pyro_prune._enums import parse_enum
from pyro_prune.models.base import Likelihood

__all__ = [
    "SUPPORTED_LAYERS",
    "HessianStructure",
    "LaplaceEvidence",
    "LaplacePosterior",
    "RemovalStructure",
    "backend_available",
    "fit_evidence",
    "laplace_posterior",
    "laplace_prune",
    "laplace_removals",
    "log_evidence",
]

_LOG_2PI = math.log(2.0 * math.pi)
_ATTR = "_pyro_prune_curvature"

#: module kinds whose trainable parameters the curvature backend handles
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding,
)
#: module kinds that get Kronecker factors under ``hessian="kron"`` (the rest: their diagonal)
KRON_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


class HessianStructure(enum.Enum):
    """Which approximation of the curvature ``H`` enters ``log det(H + I/s^2)``."""

    #: the diagonal of the GGN
    DIAG = "diag"
    #: Kronecker-factored GGN (K-FAC) per Linear / Conv2d weight, the rest diagonal
    KRON = "kron"
    #: the whole GGN (d x d: small networks only)
    FULL = "full"


def backend_available() -> bool:
    """True when the curvature backend (ASDL, ``pip install asdfghjkl``) can be imported."""
    try:
        import asdl  # noqa: F401
    except ImportError:
        return False
    return True


def _asdl() -> Any:
    try:
        import asdl
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the Laplace evidence needs the curvature backend ASDL: pip install 'pyro-prune[laplace]' "
            "(or pip install asdfghjkl==0.1a4)"
        ) from err
    return asdl


# --------------------------------------------------------------------------- arguments
def _positive(value: object, arg: str) -> float:
    return check_number(value, arg, positive=True)


def _tensors(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError("data must hold exactly two tensors: inputs and targets")
        if len(data[0]) != len(data[1]):
            raise ValueError(f"data: {len(data[0])} inputs but {len(data[1])} targets")
        data = TensorDataset(*data)
    return check_dataset(data, "data")


def _likelihood(likelihood: object, obs_scale: object) -> tuple[Likelihood, float]:
    kind = parse_enum(Likelihood, likelihood.value if isinstance(likelihood, Likelihood) else likelihood,
                      "likelihood")
    if kind is Likelihood.GAUSSIAN:
        if obs_scale is None:
            raise ValueError('likelihood="gaussian" needs obs_scale (the noise standard deviation)')
        return kind, _positive(obs_scale, "obs_scale")
    if obs_scale is not None:
        raise ValueError('obs_scale is only for likelihood="gaussian"')
    return kind, 1.0


def _parameters(net: nn.Module) -> list[tuple[str, nn.Module, list[tuple[str, nn.Parameter]]]]:
    """``(module path, module, [(parameter name, parameter)])`` of every module with trainable parameters.

    Raises ``ValueError`` naming the first module of an unsupported kind.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    out = []
    for path, module in net.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, SUPPORTED_LAYERS):
            kinds = ", ".join(k.__name__ for k in SUPPORTED_LAYERS)
            raise ValueError(
                f"the curvature backend cannot handle layer {path or '<root>'!r} "
                f"({type(module).__name__}, trainable parameters {[n for n, _ in own]}); "
                f"supported kinds: {kinds} (freeze other parameters with requires_grad_(False))"
            )
        out.append((path, module, own))
    if not out:
        raise ValueError("net has no trainable parameters")
    return out


def _full_name(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _masks(net: nn.Module, mask: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if mask is None:
        return {}
    if not isinstance(mask, Mapping):
        raise TypeError(f"mask must be a dict from parameter name to a bool tensor, got {type(mask).__name__}")
    params = dict(net.named_parameters())
    out: dict[str, Tensor] = {}
    for name, m in mask.items():
        if name not in params:
            raise ValueError(f"mask names {name!r}, which is not a parameter of net "
                             f"(parameters: {list(params)[:8]}{'...' if len(params) > 8 else ''})")
        p = params[name]
        if not isinstance(m, Tensor) or m.dtype != torch.bool or m.shape != p.shape:
            raise ValueError(f"mask[{name!r}] must be a bool tensor of shape {tuple(p.shape)}")
        if not p.requires_grad:
            raise ValueError(f"mask[{name!r}] names a frozen parameter (requires_grad=False)")
        out[name] = m.to(p.device)
    return out


# --------------------------------------------------------------------------- curvature
def _empty() -> Tensor:
    return torch.zeros(0, dtype=torch.float64)


@dataclass
class _Block:
    """Curvature of one parameter (unit observation noise), before masking."""

    name: str
    param: Tensor
    kind: str  # "diag" | "kron" | "outer" (a matrix over the parameter: a bias under kron) | "full"
    diag: Tensor = field(default_factory=_empty)  # param-shaped ("diag")
    kron_b: Tensor = field(default_factory=_empty)  # out x out ("kron")
    kron_a: Tensor = field(default_factory=_empty)  # in x in ("kron")
    kron_n: int = 1  # the K-FAC normaliser: H = B (x) A / n
    matrix: Tensor = field(default_factory=_empty)  # numel x numel ("outer")
    index: Tensor = field(default_factory=_empty)  # positions in the full matrix ("full")


@dataclass
class _Curvature:
    structure: HessianStructure
    blocks: list[_Block]
    full: Tensor | None
    log_likelihood: float  # at unit obs noise for the Gaussian (see rss)
    rss: float  # sum of squared residuals (Gaussian), 0 otherwise
    num_obs: int  # number of scalar observations (Gaussian), N otherwise
    num_data: int
    accuracy: float | None


def _batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def _shapes(structure: HessianStructure) -> list[Any]:
    from asdl.matrices import SHAPE_DIAG, SHAPE_FULL, SHAPE_KRON

    if structure is HessianStructure.DIAG:
        return [SHAPE_DIAG]
    if structure is HessianStructure.FULL:
        return [SHAPE_FULL]
    others = [k for k in SUPPORTED_LAYERS if k not in KRON_LAYERS]
    return [SHAPE_KRON] + [(k, SHAPE_DIAG) for k in others]


def _compute_curvature(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    kind: Likelihood,
    structure: HessianStructure,
    batch_size: int,
) -> _Curvature:
    _asdl()
    from asdl.fisher import FisherConfig, get_fisher_maker
    from asdl.grad_maker import LOSS_CROSS_ENTROPY, LOSS_MSE
    from asdl.matrices import FISHER_EXACT

    modules = _parameters(net)
    loss_type = LOSS_CROSS_ENTROPY if kind is Likelihood.CATEGORICAL else LOSS_MSE
    config = FisherConfig(fisher_type=FISHER_EXACT, loss_type=loss_type, fisher_shapes=_shapes(structure),
                          data_size=1, fisher_attr=_ATTR)
    maker = get_fisher_maker(net, config)
    ll = torch.zeros((), dtype=torch.float64)
    rss = torch.zeros((), dtype=torch.float64)
    correct = 0
    num_obs = 0
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # ASDL registers module backward hooks that torch flags as deprecated
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.nn\.modules\.module")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.nn\.modules\.module")
            for i, (xb, yb) in enumerate(_batches(x, y, batch_size)):
                maker.setup_model_call(net, xb)
                out, _ = maker.forward_and_backward(accumulate=i > 0)
                out = out.detach()
                if kind is Likelihood.CATEGORICAL:
                    if out.dim() != 2:
                        raise ValueError(f"a categorical net must output logits [batch, classes], got {tuple(out.shape)}")
                    ll -= F.cross_entropy(out.double(), yb, reduction="sum")
                    correct += int((out.argmax(-1) == yb).sum())
                    num_obs += len(yb)
                else:
                    if out.shape != yb.shape:
                        raise ValueError(f"a gaussian net's output {tuple(out.shape)} must match the targets' "
                                         f"shape {tuple(yb.shape)}")
                    rss += (out.double() - yb.double()).square().sum()
                    num_obs += yb.numel()
        blocks: list[_Block] = []
        full: Tensor | None = None
        if structure is HessianStructure.FULL:
            stats = getattr(net, _ATTR, None)
            full = None if stats is None else stats.data
            total = sum(p.numel() for _, _, own in modules for _, p in own)
            if full is None or full.shape != (total, total):
                raise ValueError(f"the curvature backend returned no full matrix over the {total} parameters")
            full = full.detach().double()
            offset = 0
            for path, _, own in modules:
                for pname, p in own:
                    n = p.numel()
                    blocks.append(_Block(_full_name(path, pname), p, "full",
                                         index=torch.arange(offset, offset + n)))
                    offset += n
        else:
            for path, module, own in modules:
                stats = getattr(module, _ATTR, None)
                if stats is None:
                    raise ValueError(f"the curvature backend computed nothing for layer {path!r} "
                                     f"({type(module).__name__}); is it used in the forward pass?")
                use_kron = structure is HessianStructure.KRON and isinstance(module, KRON_LAYERS)
                for pname, p in own:
                    name = _full_name(path, pname)
                    if use_kron:
                        kron = stats.kron
                        b = kron.B.detach().double()
                        if pname == "weight":
                            blocks.append(_Block(name, p, "kron", kron_b=b, kron_a=kron.A.detach().double(),
                                                 kron_n=len(x)))
                        else:
                            blocks.append(_Block(name, p, "outer", matrix=b))
                    else:
                        value = getattr(stats.diag, pname, None)
                        if value is None or value.numel() != p.numel():
                            raise ValueError(f"the curvature backend returned no diagonal for {name!r}")
                        blocks.append(_Block(name, p, "diag", diag=value.detach().double().reshape(p.shape)))
    finally:
        net.train(was_training)
        for module in net.modules():
            if hasattr(module, _ATTR):
                delattr(module, _ATTR)
    curvature = _Curvature(
        structure=structure, blocks=blocks, full=full, log_likelihood=float(ll), rss=float(rss),
        num_obs=num_obs, num_data=len(x),
        accuracy=correct / len(x) if kind is Likelihood.CATEGORICAL else None,
    )
    _check_finite_curvature(curvature)
    return curvature


def _check_finite_curvature(c: _Curvature) -> None:
    if c.full is not None and not bool(torch.isfinite(c.full).all()):
        bad = [b.name for b in c.blocks if not bool(torch.isfinite(c.full[b.index][:, b.index]).all())]
        raise FloatingPointError(f"non-finite curvature in parameters {bad}")
    for b in c.blocks:
        for t in (b.diag, b.matrix, b.kron_a, b.kron_b):
            if not bool(torch.isfinite(t).all()):
                n = int((~torch.isfinite(t)).sum())
                raise FloatingPointError(f"non-finite curvature ({n} entries) for parameter {b.name!r}")
    if not math.isfinite(c.log_likelihood) or not math.isfinite(c.rss):
        raise FloatingPointError("the log likelihood of the data is not finite")


def _kron_split(keep: Tensor) -> tuple[Tensor, Tensor] | None:
    """Row and column keep-masks of a weight whose keep-mask is an outer product, else ``None``."""
    m = keep.reshape(keep.shape[0], -1)
    rows, cols = m.any(1), m.any(0)
    if not torch.equal(m, rows[:, None] & cols[None, :]):
        return None
    return rows, cols


@dataclass
class _KronRemoval:
    """Single weights removed from a Kronecker block: their posterior marginals enter log det.

    With ``Sigma = P^-1``, ``log det P_kept = log det P + log det Sigma_SS`` exactly (Schur
    complement); the removed set's ``log det Sigma_SS`` is taken mean-field as the sum of
    the marginal ``log [P^-1]_ii``, an upper bound (Hadamard), so the pruned model's Occam
    factor is, if anything, understated.
    """

    eb: Tensor
    qb2: Tensor
    ea: Tensor
    qa2: Tensor
    n: int
    removed: Tensor  # bool [out, in]

    def log_variances(self, obs_prec: Tensor, prior_prec: Tensor) -> Tensor:
        inv = 1.0 / (torch.outer(self.eb, self.ea) * (obs_prec / self.n) + prior_prec)
        var = self.qb2 @ inv @ self.qa2.T
        return torch.log(var[self.removed])


def _eigenvalues(c: _Curvature, keep: Mapping[str, Tensor]) -> tuple[Tensor, list[_KronRemoval]]:
    """Eigenvalues of the unit-noise curvature restricted to the kept parameters.

    Kronecker blocks whose mask removes whole rows / columns are sliced exactly; a mask
    that removes single weights keeps the whole block's eigenvalues and returns a
    :class:`_KronRemoval` correction.
    """
    if c.full is not None:
        idx = torch.cat([b.index[keep[b.name].reshape(-1).cpu()] if b.name in keep else b.index
                         for b in c.blocks])
        return torch.linalg.eigvalsh(c.full[idx][:, idx]), []
    parts = []
    corrections: list[_KronRemoval] = []
    for b in c.blocks:
        k = keep.get(b.name)
        if b.kind == "diag":
            d = b.diag.reshape(-1)
            parts.append(d if k is None else d[k.reshape(-1).to(d.device)])
        elif b.kind == "outer":
            m = b.matrix
            if k is not None:
                kk = k.reshape(-1).to(m.device)
                m = m[kk][:, kk]
            parts.append(torch.linalg.eigvalsh(m))
        else:
            bmat, amat, n = b.kron_b, b.kron_a, b.kron_n
            split = None if k is None else _kron_split(k)
            if split is not None:
                rows, cols = (t.to(bmat.device) for t in split)
                bmat, amat = bmat[rows][:, rows], amat[cols][:, cols]
            if k is not None and split is None:
                eb, qb = torch.linalg.eigh(bmat)
                ea, qa = torch.linalg.eigh(amat)
                removed = ~k.reshape(k.shape[0], -1).to(bmat.device)
                corrections.append(_KronRemoval(eb, qb.square(), ea, qa.square(), n, removed))
            else:
                eb, ea = torch.linalg.eigvalsh(bmat), torch.linalg.eigvalsh(amat)
            parts.append(torch.outer(eb, ea).reshape(-1) / n)
    eig = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return eig, corrections


# --------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class LaplaceEvidence:
    """The Laplace log evidence of a network and its terms (natural logs).

    ``log_evidence = log_likelihood + log_occam``, where ``log_occam = log_prior +
    (num_params / 2) log 2 pi - log_det_precision / 2``. ``float(ev)`` is the log evidence.

    Attributes:
        log_likelihood: ``log p(D | w*)``.
        log_prior: ``log N(w*_kept; 0, s^2 I)`` over the kept parameters.
        log_det_precision: ``log det P`` of the kept parameters.
        num_params: number of kept (free) parameters ``d``.
        num_data: number of examples.
        prior_scale: ``s``.
        obs_scale: ``sigma`` (``None`` for the categorical likelihood).
        hessian: the curvature structure used.
        accuracy: training accuracy at ``w*`` (categorical), else ``None``.
    """

    log_likelihood: float
    log_prior: float
    log_det_precision: float
    num_params: int
    num_data: int
    prior_scale: float
    obs_scale: float | None
    hessian: HessianStructure
    accuracy: float | None = None

    @property
    def log_occam(self) -> float:
        """``log p(D) - log p(D | w*)``: prior density times posterior volume (<= 0 in practice)."""
        return self.log_prior + 0.5 * self.num_params * _LOG_2PI - 0.5 * self.log_det_precision

    @property
    def log_evidence(self) -> float:
        """The Laplace approximation of ``log p(D)``."""
        return self.log_likelihood + self.log_occam

    def __float__(self) -> float:
        return self.log_evidence


def _evaluate(c: _Curvature, eig: Tensor, sq_norm: float, num_params: int, kind: Likelihood,
              log_s: Tensor, log_sigma: Tensor, corrections: Sequence[_KronRemoval] = ()
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(log evidence, log likelihood, log prior, log det P) as differentiable functions of the scales."""
    prior_prec = torch.exp(-2.0 * log_s)
    if kind is Likelihood.GAUSSIAN:
        obs_prec = torch.exp(-2.0 * log_sigma)
        ll = -0.5 * c.rss * obs_prec - c.num_obs * (log_sigma + 0.5 * _LOG_2PI)
    else:
        obs_prec = torch.ones((), dtype=torch.float64)
        ll = torch.tensor(c.log_likelihood, dtype=torch.float64)
    terms = eig * obs_prec + prior_prec
    log_det = torch.log(terms).sum()
    for corr in corrections:
        log_det = log_det + corr.log_variances(obs_prec, prior_prec).sum()
    log_prior = -0.5 * sq_norm * prior_prec - num_params * (log_s + 0.5 * _LOG_2PI)
    log_ev = ll + log_prior + 0.5 * num_params * _LOG_2PI - 0.5 * log_det
    return log_ev, ll, log_prior, log_det


def _check_precision(c: _Curvature, eig: Tensor, s: float, sigma: float) -> None:
    terms = eig / sigma**2 + 1.0 / s**2
    if not bool(torch.isfinite(terms).all()) or not bool((terms > 0).all()):
        n = int((~(terms > 0)).sum())
        raise FloatingPointError(
            f"the posterior precision H + I/s^2 has {n} non-positive or non-finite eigenvalues "
            f"(smallest curvature eigenvalue {float(eig.min()):.3g}, 1/s^2 = {1.0 / s**2:.3g})"
        )


@dataclass
class _Prepared:
    curvature: _Curvature
    keep: dict[str, Tensor]
    eig: Tensor
    sq_norm: float
    num_params: int
    kind: Likelihood
    corrections: list[_KronRemoval]


@torch.no_grad()
def _likelihood_pass(net: nn.Module, x: Tensor, y: Tensor, kind: Likelihood, batch_size: int
                     ) -> tuple[float, float, int, float | None]:
    """(log likelihood at unit noise, rss, number of observations, accuracy) over all of the data."""
    was_training = net.training
    net.eval()
    ll = rss = 0.0
    correct = num_obs = 0
    try:
        for xb, yb in _batches(x, y, batch_size):
            out = net(xb).double()
            if kind is Likelihood.CATEGORICAL:
                ll -= float(F.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(-1) == yb).sum())
                num_obs += len(yb)
            else:
                rss += float((out - yb.double()).square().sum())
                num_obs += yb.numel()
    finally:
        net.train(was_training)
    return ll, rss, num_obs, (correct / len(x) if kind is Likelihood.CATEGORICAL else None)


def _scale_curvature(c: _Curvature, factor: float) -> None:
    """Multiply the curvature by ``factor`` (a subset's sum scaled up to the whole data)."""
    if c.full is not None:
        c.full = c.full * factor
    for b in c.blocks:
        if b.kind == "diag":
            b.diag = b.diag * factor
        elif b.kind == "outer":
            b.matrix = b.matrix * factor
        elif b.kind == "kron":
            b.kron_b = b.kron_b * factor


def _subset(n: int, curvature_subset: int | None) -> Tensor | None:
    if curvature_subset is None:
        return None
    if isinstance(curvature_subset, bool) or not isinstance(curvature_subset, int) or curvature_subset < 1:
        raise ValueError(f"curvature_subset must be a positive int or None, got {curvature_subset!r}")
    if curvature_subset >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:curvature_subset]


def _prepare(net: nn.Module, data: Any, kind: Likelihood, structure: HessianStructure,
             mask: Mapping[str, Tensor] | None, batch_size: int,
             curvature_subset: int | None = None) -> _Prepared:
    x, y = _tensors(data)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    index = _subset(len(x), curvature_subset)
    keep = _masks(net, mask)
    params = dict(net.named_parameters())
    saved: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            for name, m in keep.items():
                saved[name] = params[name].detach().clone()
                params[name].mul_(m)
        if index is None:
            curvature = _compute_curvature(net, x, y, kind, structure, batch_size)
        else:
            idx = index.to(x.device)
            curvature = _compute_curvature(net, x[idx], y[idx], kind, structure, batch_size)
            _scale_curvature(curvature, len(x) / len(idx))
            ll, rss, num_obs, acc = _likelihood_pass(net, x, y, kind, batch_size)
            if not (math.isfinite(ll) and math.isfinite(rss)):
                raise FloatingPointError("the log likelihood of the data is not finite")
            curvature.log_likelihood, curvature.rss, curvature.num_obs = ll, rss, num_obs
            curvature.num_data, curvature.accuracy = len(x), acc
        sq = 0.0
        count = 0
        with torch.no_grad():
            for b in curvature.blocks:
                w = b.param.detach().double()
                k = keep.get(b.name)
                if k is not None:
                    w = w[k]
                sq += float(w.square().sum())
                count += w.numel()
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
    eig, corrections = _eigenvalues(curvature, keep)
    return _Prepared(curvature, keep, eig, sq, count, kind, corrections)


def _result(p: _Prepared, s: float, sigma: float, structure: HessianStructure) -> LaplaceEvidence:
    _check_precision(p.curvature, p.eig, s, sigma)
    log_s = torch.tensor(math.log(s), dtype=torch.float64)
    log_sigma = torch.tensor(math.log(sigma), dtype=torch.float64)
    _, ll, lp, ld = _evaluate(p.curvature, p.eig, p.sq_norm, p.num_params, p.kind, log_s, log_sigma,
                              p.corrections)
    return LaplaceEvidence(
        log_likelihood=float(ll), log_prior=float(lp), log_det_precision=float(ld),
        num_params=p.num_params, num_data=p.curvature.num_data, prior_scale=s,
        obs_scale=sigma if p.kind is Likelihood.GAUSSIAN else None, hessian=structure,
        accuracy=p.curvature.accuracy,
    )


def log_evidence(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    prior_scale: float,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.DIAG,
    mask: Mapping[str, Tensor] | None = None,
    batch_size: int = 512,
    curvature_subset: int | None = None,
) -> LaplaceEvidence:
    """The Laplace log marginal likelihood of ``net`` at its current weights (taken as the MAP).

    Args:
        net: a deterministic network (any ``nn.Module`` whose trainable parameters live in
            :data:`SUPPORTED_LAYERS`; frozen parameters are constants). It outputs logits
            (categorical) or the means (gaussian).
        data: ``TensorDataset(inputs, targets)`` or an ``(inputs, targets)`` pair.
        prior_scale: ``s`` of the isotropic prior ``N(0, s^2 I)`` on every trainable parameter.
        likelihood: ``"categorical"`` or ``"gaussian"``.
        obs_scale: ``sigma`` of the Gaussian likelihood (required for it, else ``None``).
        hessian: ``"diag"``, ``"kron"`` or ``"full"`` (:class:`HessianStructure`).
        mask: the pruned model: parameter name (as in ``net.named_parameters()``) to a bool
            tensor of its shape, True = kept; the rest are fixed at 0 (the network is
            evaluated with them zeroed and restored afterwards). Parameters not named are
            kept whole. With ``"kron"`` a mask that removes whole rows / input columns is
            exact for the K-FAC precision; one that removes single weights takes the
            removed weights' posterior mean field (see :class:`_KronRemoval`).
        batch_size: examples per curvature pass.
        curvature_subset: compute the curvature on this many examples (a seeded random
            subset) and scale it by ``N / subset``, an unbiased estimate of the GGN's sum
            over the data; the likelihood is always over all of ``data``. ``None``: all.

    Returns:
        :class:`LaplaceEvidence` (``float()`` of it is the log evidence).

    Raises:
        ValueError: a module kind the backend cannot handle (named), a bad mask, bad data.
        FloatingPointError: non-finite curvature or likelihood, or a precision that is
            not positive definite (reported, never clamped).
    """
    kind, sigma = _likelihood(likelihood, obs_scale)
    s = _positive(prior_scale, "prior_scale")
    structure = parse_enum(HessianStructure, hessian.value if isinstance(hessian, HessianStructure) else hessian,
                           "hessian")
    prepared = _prepare(net, data, kind, structure, mask, batch_size, curvature_subset)
    return _result(prepared, s, sigma, structure)


def _maximise(p: _Prepared, s0: float, sigma0: float, fit_obs: bool, fit_prior: bool = True) -> tuple[float, float]:
    log_s = torch.tensor(math.log(s0), dtype=torch.float64, requires_grad=fit_prior)
    log_sigma = torch.tensor(math.log(sigma0), dtype=torch.float64, requires_grad=fit_obs)
    variables = ([log_s] if fit_prior else []) + ([log_sigma] if fit_obs else [])
    if not variables:
        return s0, sigma0
    opt = torch.optim.LBFGS(variables, lr=1.0, max_iter=200, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = -_evaluate(p.curvature, p.eig, p.sq_norm, p.num_params, p.kind, log_s, log_sigma,
                           p.corrections)[0]
        value.backward()
        return value

    opt.step(closure)
    s, sigma = math.exp(float(log_s.detach())), math.exp(float(log_sigma.detach()))
    if not (math.isfinite(s) and math.isfinite(sigma)):
        raise FloatingPointError("maximising the evidence over the prior scale diverged")
    return s, sigma


def fit_evidence(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    prior_scale: float = 1.0,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.DIAG,
    mask: Mapping[str, Tensor] | None = None,
    fit_obs_scale: bool = True,
    batch_size: int = 512,
    curvature_subset: int | None = None,
) -> LaplaceEvidence:
    """:func:`log_evidence` maximised over the prior scale (and the Gaussian noise).

    The curvature is computed once at the current weights; the evidence is then a closed
    form in ``(log s, log sigma)`` (see the module docstring), maximised with L-BFGS from
    ``prior_scale`` / ``obs_scale``. The weights are not refitted (as laplace-torch's
    post-hoc ``optimize_prior_precision``). The result's ``prior_scale`` / ``obs_scale``
    are the maximisers.
    """
    kind, sigma = _likelihood(likelihood, obs_scale)
    s = _positive(prior_scale, "prior_scale")
    structure = parse_enum(HessianStructure, hessian.value if isinstance(hessian, HessianStructure) else hessian,
                           "hessian")
    prepared = _prepare(net, data, kind, structure, mask, batch_size, curvature_subset)
    s, sigma = _maximise(prepared, s, sigma, fit_obs_scale and kind is Likelihood.GAUSSIAN)
    return _result(prepared, s, sigma, structure)


# --------------------------------------------------------------------------- posterior
@dataclass(frozen=True)
class LaplacePosterior:
    """The Laplace posterior ``N(w*, P^-1)`` of a network: means and marginal variances.

    Attributes:
        mean: parameter name to ``w*`` (a detached copy).
        variance: parameter name to the marginal variance ``[P^-1]_ii`` (same shape).
        evidence: the :class:`LaplaceEvidence` at ``w*`` with the scales used.
    """

    mean: dict[str, Tensor]
    variance: dict[str, Tensor]
    evidence: LaplaceEvidence = field(repr=False)
    kron: dict[str, tuple[Tensor, Tensor, Tensor, Tensor, int]] = field(default_factory=dict, repr=False)

    def row_delta_f(self, name: str) -> Tensor:
        r"""Gaussian BMR of setting each row of weight ``name`` to 0, under the joint row posterior.

        For a Kronecker block ``P = B (x) A / n + I/s^2`` (eigenpairs ``(b_k, u_k)``,
        ``(a_l, v_l)``) the posterior covariance of row ``i`` is ``V diag(c_i) V^T`` with
        ``c_il = sum_k u_ik^2 / (b_k a_l / (n sigma^2) + 1/s^2)``, and BMR to the reduced
        prior ``N(0, r^2 I)``, ``r -> 0`` (the Savage-Dickey ratio) is

        .. math:: \Delta F_i = \tfrac12 \sum_l \big[\log s^2 - \log c_{il} - (V^\top m_i)_l^2 / c_{il}\big],

        the sum of :func:`~pyro_prune.reduction.delta_f_gaussian` over the row when ``A``
        and ``B`` are diagonal. Only for Kronecker blocks (``hessian="kron"``).
        """
        if name not in self.kron:
            raise ValueError(f"{name!r} has no Kronecker factors (use hessian='kron')")
        eb, qb, ea, qa, n = self.kron[name]
        s = self.evidence.prior_scale
        obs = 1.0 if self.evidence.obs_scale is None else self.evidence.obs_scale
        c = qb.square() @ (1.0 / (torch.outer(eb, ea) / (n * obs**2) + 1.0 / s**2))
        m = self.mean[name].double().reshape(c.shape[0], -1).to(c.device) @ qa
        return 0.5 * (2.0 * math.log(s) - torch.log(c) - m.square() / c).sum(1)

    def column_delta_f(self, name: str) -> Tensor:
        r"""Gaussian BMR of setting each input column of weight ``name`` to 0, jointly over the column.

        The transpose of :meth:`row_delta_f`: the column ``j`` (all outputs' weights from
        input ``j``; for a convolution, one input channel's kernel position) has covariance
        ``U diag(c_j) U^T`` with ``c_jk = sum_l v_jl^2 / (b_k a_l / (n sigma^2) + 1/s^2)``.
        Returns one value per column of the weight flattened to ``[out, -1]``.
        """
        if name not in self.kron:
            raise ValueError(f"{name!r} has no Kronecker factors (use hessian='kron')")
        eb, qb, ea, qa, n = self.kron[name]
        s = self.evidence.prior_scale
        obs = 1.0 if self.evidence.obs_scale is None else self.evidence.obs_scale
        c = (1.0 / (torch.outer(eb, ea) / (n * obs**2) + 1.0 / s**2)) @ qa.square().T
        m = qb.T @ self.mean[name].double().reshape(qb.shape[0], -1).to(c.device)
        return 0.5 * (2.0 * math.log(s) - torch.log(c) - m.square() / c).sum(0)


def _marginal_variances(c: _Curvature, s: float, sigma: float) -> dict[str, Tensor]:
    prior_prec, obs_prec = 1.0 / s**2, 1.0 / sigma**2
    out: dict[str, Tensor] = {}
    if c.full is not None:
        total = c.full.shape[0]
        precision = c.full * obs_prec + prior_prec * torch.eye(total, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(precision)
        if int(info) != 0:
            raise FloatingPointError("the posterior precision is not positive definite")
        var = torch.cholesky_inverse(chol).diagonal()
        for b in c.blocks:
            out[b.name] = var[b.index].reshape(b.param.shape)
        return out
    for b in c.blocks:
        if b.kind == "diag":
            out[b.name] = 1.0 / (b.diag * obs_prec + prior_prec)
        elif b.kind == "outer":
            m = b.matrix * obs_prec + prior_prec * torch.eye(b.matrix.shape[0], dtype=torch.float64)
            out[b.name] = torch.linalg.inv(m).diagonal().reshape(b.param.shape)
        else:
            bmat, amat, n = b.kron_b, b.kron_a, b.kron_n
            eb, qb = torch.linalg.eigh(bmat)
            ea, qa = torch.linalg.eigh(amat)
            inv = 1.0 / (torch.outer(eb, ea) * (obs_prec / n) + prior_prec)
            out[b.name] = (qb.square() @ inv @ qa.square().T).reshape(b.param.shape)
    return out


def laplace_posterior(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    prior_scale: float | None = None,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.DIAG,
    batch_size: int = 512,
    curvature_subset: int | None = None,
) -> LaplacePosterior:
    """The Laplace posterior of ``net`` around its current weights.

    ``prior_scale=None`` fits it (and the Gaussian ``obs_scale`` when that is ``None``)
    by maximising the evidence (:func:`fit_evidence`); a number is used as given.
    """
    structure = parse_enum(HessianStructure, hessian.value if isinstance(hessian, HessianStructure) else hessian,
                           "hessian")
    kind = parse_enum(Likelihood, likelihood.value if isinstance(likelihood, Likelihood) else likelihood,
                      "likelihood")
    fit_obs = kind is Likelihood.GAUSSIAN and obs_scale is None
    kind, sigma = _likelihood(kind, 1.0 if fit_obs else obs_scale)
    prepared = _prepare(net, data, kind, structure, None, batch_size, curvature_subset)
    if prior_scale is None:
        s, sigma = _maximise(prepared, 1.0, sigma, fit_obs)
    else:
        s = _positive(prior_scale, "prior_scale")
        if fit_obs:
            _, sigma = _maximise(prepared, s, sigma, True, fit_prior=False)
    evidence = _result(prepared, s, sigma, structure)
    variance = _marginal_variances(prepared.curvature, s, sigma)
    kron = {}
    for b in prepared.curvature.blocks:
        if b.kind == "kron":
            eb, qb = torch.linalg.eigh(b.kron_b)
            ea, qa = torch.linalg.eigh(b.kron_a)
            kron[b.name] = (eb, qb, ea, qa, b.kron_n)
    mean = {b.name: b.param.detach().clone() for b in prepared.curvature.blocks}
    return LaplacePosterior(mean=mean, variance=variance, evidence=evidence, kron=kron)


# --------------------------------------------------------------------------- BMR
class RemovalStructure(enum.Enum):
    """What :func:`laplace_removals` decides about."""

    #: the structures of a model's gates: neurons of Linear layers, channels of convolutions
    NEURON = "neuron"
    #: single weights of every Linear / Conv2d layer
    WEIGHT = "weight"


def _gated_module(net: nn.Module, gate_name: str) -> nn.Module | None:
    """The module whose output the gate ``gate_name`` multiplies (from the fx graph), if any."""
    graph = getattr(net, "graph", None)
    if graph is None:
        return None
    for node in graph.nodes:
        if node.op == "call_module" and str(node.target) == gate_name and node.args:
            arg = node.args[0]
            if getattr(arg, "op", None) == "call_module":
                return net.get_submodule(str(arg.target))
    return None


def _structure_parameters(net: nn.Module, gate_name: str, gate: Any) -> list[tuple[str, Tensor]]:
    """``(parameter name, parameter)`` whose axis 0 runs over the gate's structures.

    The producer's weight rows and bias, and the per-channel parameters of a BatchNorm the
    gate follows.
    """
    n = gate.num_structures
    names = dict(net.named_modules())
    owners: list[str] = []
    if gate.producer_name is not None:
        owners.append(gate.producer_name)
    gated = _gated_module(net, gate_name)
    if gated is not None:
        path = next(p for p, m in names.items() if m is gated)
        if path not in owners:
            owners.append(path)
    out = []
    for path in owners:
        for pname, p in names[path].named_parameters(recurse=False):
            if p.requires_grad and p.dim() >= 1 and p.shape[0] == n:
                out.append((_full_name(path, pname), p))
    if not out:
        raise ValueError(f"gate {gate_name!r} has no producer parameters with {n} rows")
    return out


#: per-weight round-off allowed in a structure's dF before a tie (dF = 0) stops counting as one
_TIE_TOLERANCE = 1e-9

_PASS_THROUGH = ("relu", "relu_", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten", "dropout",
                 "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "hardtanh", "relu6", "identity")


def _consumer_columns(net: nn.Module, gate_name: str, n: int) -> list[tuple[str, int]]:
    """``(weight name, block)`` of the Linear / Conv2d layers that read the gate's structures.

    Followed from the gate through activations, pooling, dropout and flatten (by the fx
    graph); structure ``i`` owns the input columns ``i*block .. (i+1)*block - 1`` of the
    weight flattened to ``[out, -1]`` (a flattened channel's ``H*W`` block, a conv input
    channel's kernel). Anything else on the way (a residual add, a normalisation) ends the
    search: those structures are judged on their incoming weights only.
    """
    graph = getattr(net, "graph", None)
    if graph is None:
        return []
    modules = dict(net.named_modules())
    start = next((node for node in graph.nodes if node.op == "call_module" and str(node.target) == gate_name), None)
    if start is None:
        return []
    out: list[tuple[str, int]] = []
    stack, seen = list(start.users), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module":
            m = modules.get(str(node.target))
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.requires_grad:
                width = m.weight[0].numel()
                in_units = m.in_features if isinstance(m, nn.Linear) else m.in_channels
                if isinstance(m, nn.Conv2d) and m.groups != 1:
                    return []
                if in_units % n == 0 and width % n == 0:
                    out.append((_full_name(str(node.target), "weight"), width // n))
                continue
            if isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout,
                              nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Identity)):
                stack.extend(node.users)
                continue
            return []
        target = getattr(node.target, "__name__", str(node.target))
        if node.op in ("call_function", "call_method") and target in _PASS_THROUGH:
            stack.extend(node.users)
            continue
        return []  # an add, a normalisation, the output: incoming weights only
    return out


def laplace_removals(
    model: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    structure: RemovalStructure | str = RemovalStructure.NEURON,
    prior_scale: float | None = None,
    likelihood: Likelihood | str | None = None,
    obs_scale: float | None = None,
    hessian: HessianStructure | str = HessianStructure.KRON,
    reduced_scale: float = 1e-8,
    batch_size: int = 512,
    curvature_subset: int | None = None,
) -> dict[str, Tensor]:
    r"""Threshold-free removals from the Laplace posterior of a trained network.

    The Laplace posterior :math:`\mathcal N(w^*, P^{-1})` (:func:`laplace_posterior`) gives
    every weight a mean and a marginal variance; Gaussian BMR
    (:func:`~pyro_prune.reduction.delta_f_gaussian`, prior :math:`\mathcal N(0, s^2)`,
    reduced prior :math:`\mathcal N(0, r^2)`) gives the change in log evidence of fixing
    it at 0. A structure's weights are its incoming weights (the producer's weight row and
    bias, the entries of a BatchNorm it passes) and its outgoing ones (the input columns of
    the Linear / Conv2d layers that read it, found through activations, pooling and flatten;
    :func:`_consumer_columns`), and its :math:`\Delta F` adds up theirs: with
    ``hessian="kron"`` (default) the weight row and every outgoing column are reduced
    jointly under their Kronecker posterior covariance (:meth:`LaplacePosterior.row_delta_f`,
    :meth:`LaplacePosterior.column_delta_f`), biases and BatchNorm entries mean field; with
    ``"diag"`` every weight mean field (the sum of ``delta_f_gaussian`` over them). A structure is removed where :math:`\Delta F \ge 0`:
    no threshold, no target ratio (a tie within float64 round-off, ``1e-9`` per weight,
    counts as ``dF = 0``). Structures are judged one at a time (each with the
    others kept), as the other BMR criteria.

    Args:
        model: for ``structure="neuron"`` a :class:`~pyro_prune.models.PrunableNet` with
            gates, e.g. ``bayesianize(net, gate="mask")`` of a trained ``net``; the
            structure of a gate is its producer's weight row and bias entry plus the
            per-channel parameters of a BatchNorm it follows. For ``"weight"`` any module
            (a ``PrunableNet``'s backbone is used).
        data: the training data ``(inputs, targets)``.
        structure: ``"neuron"`` (:class:`RemovalStructure`) or ``"weight"``.
        prior_scale: ``s``; ``None`` (default) fits it by maximising the evidence.
        likelihood, obs_scale: default: the ``PrunableNet``'s; ``"categorical"`` for a
            plain module. A Gaussian ``obs_scale=None`` is fitted.
        hessian: curvature structure of the posterior (``"kron"`` or ``"diag"``).
        reduced_scale: ``r`` of the reduced prior (mean-field terms; the joint row term is
            its ``r -> 0`` limit).
        batch_size, curvature_subset: as :func:`log_evidence`.

    Returns:
        ``structure="neuron"``: gate name to a bool mask over its structures, True = remove
        (only kept structures), as :func:`~pyro_prune.inference.scoring.structure_removals`;
        ``"weight"``: parameter name of each Linear/Conv2d weight to a bool mask of its
        shape, True = remove.
    """
    from pyro_prune.models.base import PrunableNet
    from pyro_prune.models.gate import StructureGate
    from pyro_prune.models.noise import NoiseMode, noise_mode
    from pyro_prune.reduction import delta_f_gaussian

    kind = parse_enum(RemovalStructure, structure.value if isinstance(structure, RemovalStructure) else structure,
                      "structure")
    if isinstance(model, PrunableNet):
        net = model.net
        if likelihood is None:
            likelihood = model.likelihood
            if model.likelihood is Likelihood.GAUSSIAN and obs_scale is None:
                obs_scale = float(model.obs_scale)
    elif isinstance(model, nn.Module):
        if kind is RemovalStructure.NEURON:
            raise TypeError('structure="neuron" needs a PrunableNet with gates, e.g. '
                            'bayesianize(net, gate="mask"); for a plain module use laplace_prune')
        net = model
    else:
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if likelihood is None:
        likelihood = Likelihood.CATEGORICAL
    frozen = [p for m in net.modules() if isinstance(m, StructureGate)
              for p in m.parameters(recurse=False) if p.requires_grad]
    try:
        for p in frozen:  # the gates are not weights of the network's Laplace posterior
            p.requires_grad_(False)
        with noise_mode(net, NoiseMode.MEAN):
            post = laplace_posterior(net, data, prior_scale=prior_scale, likelihood=likelihood,
                                     obs_scale=obs_scale, hessian=hessian, batch_size=batch_size,
                                     curvature_subset=curvature_subset)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    s = post.evidence.prior_scale

    def delta_f(name: str) -> Tensor:
        return delta_f_gaussian(post.mean[name].double(), post.variance[name].sqrt(), prior_scale=s,
                                reduced_scale=reduced_scale)

    if kind is RemovalStructure.WEIGHT:
        out: dict[str, Tensor] = {}
        for path, module in net.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.requires_grad:
                name = _full_name(path, "weight")
                out[name] = (delta_f(name) >= 0).to(module.weight.device)
        return out
    removals: dict[str, Tensor] = {}
    for gate_name, gate in model.gates().items():  # type: ignore[union-attr, operator]
        total = torch.zeros(gate.num_structures, dtype=torch.float64)
        count = 0  # weights per structure, for the round-off tolerance of a tie
        for name, param in _structure_parameters(net, gate_name, gate):
            if name in post.kron:  # the joint posterior of the row
                total += post.row_delta_f(name).cpu()
            else:  # mean field
                total += delta_f(name).reshape(param.shape[0], -1).sum(1).cpu()
            count += param[0].numel()
        n = gate.num_structures
        for name, block in _consumer_columns(net, gate_name, n):
            if name in post.kron:  # each column jointly, the columns of a block mean field
                total += post.column_delta_f(name).reshape(n, block).sum(1).cpu()
            else:
                df = delta_f(name)
                total += df.reshape(df.shape[0], n, block).sum((0, 2)).cpu()
            count += post.mean[name].numel() // n
        # dF = 0 (the posterior is the prior: a tie, which removes) up to float64 round-off
        removals[gate_name] = (total >= -_TIE_TOLERANCE * count).to(gate.kept.device) & gate.kept
    return removals


def laplace_prune(
    net: nn.Module,
    data: TensorDataset | Sequence[Tensor],
    *,
    likelihood: Likelihood | str = Likelihood.CATEGORICAL,
    **options: Any,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """Prune the neurons / channels of a trained plain network by Laplace BMR; a smaller module.

    ``bayesianize(net, gate="mask")`` puts a deterministic gate after every hidden Linear /
    Conv2d / BatchNorm2d (the input is copied, never changed), :func:`laplace_removals`
    decides, the gates are pruned and :func:`~pyro_prune.convert.to_deterministic` slices
    the removed structures out. ``options`` go to :func:`laplace_removals`.

    Returns:
        ``(smaller module, removals)`` with ``removals`` as :func:`laplace_removals` returns.
    """
    from pyro_prune.convert import to_deterministic
    from pyro_prune.models.bayesianize import bayesianize

    x, _ = _tensors(data)
    model = bayesianize(net, gate="mask", likelihood=likelihood)
    model.eval()
    removals = laplace_removals(model, data, likelihood=likelihood, **options)
    gates = model.gates()
    for name, remove in removals.items():
        gates[name].prune(remove)
    return to_deterministic(model, example_input=x[:1]), removals
