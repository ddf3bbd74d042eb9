r"""The registry of named pruning criteria and the model prior of a removal.

A :class:`Criterion` binds an operator (a dF of :mod:`~pyro_prune.reduction.lognormal`,
:mod:`~pyro_prune.reduction.loguniform`, :mod:`~pyro_prune.reduction.gaussian`,
:mod:`~pyro_prune.reduction.joint`, or a baseline of :mod:`~pyro_prune.reduction.baselines`)
to its inputs (:class:`CriterionInput`), its options and its removal rule; :data:`CRITERIA`
holds them by name (:func:`get_criterion`, :func:`register_criterion`), and
:func:`log_posterior_odds` adds the prior odds of removing a structure to a dF.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from pyro_prune._checks import check_number
from pyro_prune.reduction._elementwise import LOG_2PI, Dim, float_tensor
from pyro_prune.reduction.baselines import expected_theta, gradient_score, l2_norm, snr
from pyro_prune.reduction.gaussian import delta_f_gaussian
from pyro_prune.reduction.joint import delta_f_joint
from pyro_prune.reduction.lognormal import delta_f_lognormal
from pyro_prune.reduction.loguniform import delta_f_loguniform

__all__ = ["BMRS_LOG_PRIOR_ODDS", "CRITERIA", "Criterion", "CriterionInput", "get_criterion",
           "log_posterior_odds", "register_criterion"]


class CriterionInput(enum.Enum):
    """The kinds of input a pruning criterion needs, with their keyword names."""

    NOISE_POSTERIOR = ("loc", "scale")  #: posterior of log-noise, per structure
    INCOMING_WEIGHTS = ("weight",)  #: a layer's weight tensor
    WEIGHT_GRADIENTS = ("grad",)  #: gradient of the loss w.r.t. that weight
    GAUSSIAN_WEIGHTS = ("weight_loc", "weight_scale")  #: mean-field Gaussian weight posterior

    @property
    def fields(self) -> tuple[str, ...]:
        return self.value

    @property
    def settings(self) -> tuple[str, ...]:
        """Optional keywords that describe this input (bounds, prior, structure axes)."""
        return _INPUT_SETTINGS[self]


_INPUT_SETTINGS = {
    CriterionInput.NOISE_POSTERIOR: ("log_low", "log_high"),
    CriterionInput.INCOMING_WEIGHTS: ("dim",),
    CriterionInput.WEIGHT_GRADIENTS: ("dim",),
    CriterionInput.GAUSSIAN_WEIGHTS: ("dim", "prior_scale"),
}

_ALL_INPUT_KEYWORDS = frozenset(
    name for member in CriterionInput for name in member.fields + member.settings
)


@dataclass(frozen=True)
class Criterion:
    """A named pruning criterion.

    Attributes:
        name: registry name.
        threshold_free: removal needs no tuned threshold (the BMR criteria: ``dF >= 0``).
        score_fn: keyword function returning a per-structure score; HIGHER = more important,
            so ``argsort`` ascending lists structures in removal order (for dF criteria the
            score is ``-dF``).
        remove_fn: keyword function returning the threshold-free removal mask, or ``None``.
        needs: the inputs the criterion takes (:class:`CriterionInput`).
        options: keyword options bound to this criterion (e.g. ``{"p1": 4}``).
        accepts: option names the criterion understands besides its inputs.
        default_threshold: for thresholded criteria, remove where ``score < threshold``.
        description: one line for listings and the CLI.

    :meth:`score`, :meth:`rank` and :meth:`remove` take the inputs as keywords: ``loc``,
    ``scale`` (and ``log_low``, ``log_high``) of the noise posterior, one value per structure;
    ``weight`` / ``grad`` / ``weight_loc``, ``weight_scale`` (and ``prior_scale``) with the
    structures on axis 0 and their incoming weights on the other axes (``dim`` overrides the
    reduced axes). Inputs of kinds the criterion does not need are ignored, so a caller may
    pass everything it has; an unknown keyword is a ``TypeError``.
    """

    name: str
    threshold_free: bool
    score_fn: Callable[..., torch.Tensor]
    remove_fn: Callable[..., torch.Tensor] | None
    needs: frozenset[CriterionInput]
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    accepts: frozenset[str] = frozenset()
    default_threshold: float | None = None
    description: str = ""

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(sorted({f for need in self.needs for f in need.fields}))

    def _arguments(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(params) - _ALL_INPUT_KEYWORDS - self.accepts
        if unknown:
            raise TypeError(
                f"criterion {self.name!r} got unexpected keyword(s) {sorted(unknown)}; "
                f"it takes inputs {list(self.input_names)} and options {sorted(self.accepts)}"
            )
        wanted = set(self.accepts)
        for need in self.needs:
            wanted.update(need.fields + need.settings)
        missing = [f for f in self.input_names if params.get(f) is None]
        if missing:
            raise TypeError(f"criterion {self.name!r} needs input(s) {missing}")
        args = {k: v for k, v in self.options.items()}
        args.update({k: v for k, v in params.items() if k in wanted and v is not None})
        return args

    def score(self, **params: Any) -> torch.Tensor:
        """Per-structure score, higher = keep. Inputs of other kinds are ignored."""
        return self.score_fn(**self._arguments(params))

    def rank(self, **params: Any) -> torch.Tensor:
        """Indices along the last axis in removal order (lowest score first, stable)."""
        return torch.argsort(self.score(**params), dim=-1, stable=True)

    def remove(
        self, *, threshold: float | None = None, fraction: float | None = None, **params: Any
    ) -> torch.Tensor:
        """Boolean removal mask.

        * threshold-free criteria: ``dF >= 0`` (``threshold`` is rejected);
        * thresholded ones: ``score < threshold`` (default :attr:`default_threshold`);
        * ``fraction=f``: for any criterion, the ``round(f * n)`` lowest-scored structures
          along the last axis; this is the only way for ``l2`` and ``grad``.
        """
        if fraction is not None:
            if threshold is not None:
                raise ValueError("pass either threshold or fraction, not both")
            if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
                raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
            score = self.score(**params)
            n = score.shape[-1] if score.dim() else 1
            k = int(round(float(fraction) * n))
            order = torch.argsort(score.reshape(score.shape or (1,)), dim=-1, stable=True)
            mask = torch.zeros(order.shape, dtype=torch.bool, device=score.device)
            mask.scatter_(-1, order[..., :k], True)
            return mask.reshape(score.shape)
        if self.threshold_free:
            if threshold is not None:
                raise ValueError(f"criterion {self.name!r} is threshold-free (removes where dF >= 0)")
            assert self.remove_fn is not None
            return self.remove_fn(**self._arguments(params))
        thr = self.default_threshold if threshold is None else check_number(threshold, "threshold")
        if thr is None:
            raise ValueError(
                f"criterion {self.name!r} has no threshold: prune to a target with "
                "remove(..., fraction=...) or use rank(...)"
            )
        return self.score(**params) < thr


def _neg(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def score(**kwargs: Any) -> torch.Tensor:
        return -fn(**kwargs)

    score.__name__ = f"neg_{fn.__name__}"
    return score


def _nonneg(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def remove(**kwargs: Any) -> torch.Tensor:
        return fn(**kwargs) >= 0

    remove.__name__ = f"{fn.__name__}_nonneg"
    return remove


#: ``log_prior_odds`` of the default criterion ``bmrs`` (and of ``bmrs_n_code``):
#: prior odds of :math:`\sqrt{2\pi}:1` for removing a structure.
BMRS_LOG_PRIOR_ODDS = 0.5 * LOG_2PI


def _check_log_prior_odds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"log_prior_odds must be a finite real number, got {value!r}")
    return float(value)


def log_posterior_odds(delta_f: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    r"""``delta_f`` plus a model prior: the log posterior odds of removing a structure.

    BMR gives the change in log evidence :math:`\Delta F = \log p(D\mid m_0) - \log p(D\mid m_1)`
    of the reduced model :math:`m_0` (structure off) against the full one. With prior odds
    :math:`p(m_0)/p(m_1)` the posterior odds are
    :math:`\log\frac{p(m_0\mid D)}{p(m_1\mid D)} = \Delta F + \texttt{log\_prior\_odds}`, and a
    structure is removed when they are :math:`\ge 0`. ``log_prior_odds = 0`` (the default of
    every BMR criterion but ``bmrs`` and ``bmrs_n_code``) is plain BMR; a positive value says
    that, when the data cannot tell the two models apart (:math:`\Delta F \approx 0`, the
    posterior has returned to the prior), the smaller model wins. Returns a keyword function
    of ``delta_f``'s arguments and ``log_prior_odds``.
    """

    def odds(*, log_prior_odds: float = 0.0, **kwargs: Any) -> torch.Tensor:
        prior = _check_log_prior_odds(log_prior_odds)
        df = delta_f(**kwargs)
        return df + prior if prior else df

    odds.__name__ = f"log_posterior_odds_{delta_f.__name__}"
    return odds


def _structure_dims(t: torch.Tensor, dim: Dim) -> Dim:
    """Criterion default for weight inputs: structures on axis 0, reduce all other axes."""
    if dim is not None:
        return dim
    if t.dim() < 2:
        raise ValueError(
            f"weight inputs need a structure axis 0 and at least one more axis, got shape "
            f"{tuple(t.shape)}; pass dim= explicitly"
        )
    return tuple(range(1, t.dim()))


def _gaussian_bmr(*, weight_loc, weight_scale, dim=None, prior_scale=1.0, reduced_scale=1e-8):
    dim = _structure_dims(float_tensor(weight_loc, "weight_loc"), dim)
    return delta_f_gaussian(
        weight_loc, weight_scale, prior_scale=prior_scale, reduced_scale=reduced_scale, dim=dim
    )


def _bmrs_joint(*, loc, scale, weight_loc, weight_scale, dim=None, log_low=-20.0, log_high=0.0,
                prior_scale=1.0, reduced_var=1e-12, reduced_scale=1e-8):
    dim = _structure_dims(float_tensor(weight_loc, "weight_loc"), dim)
    return delta_f_joint(loc, scale, weight_loc, weight_scale, log_low=log_low, log_high=log_high,
                         reduced_var=reduced_var, prior_scale=prior_scale,
                         reduced_scale=reduced_scale, dim=dim)


def _l2(*, weight, dim=None):
    return l2_norm(weight, _structure_dims(float_tensor(weight, "weight"), dim))


def _grad(*, grad, dim=None):
    return gradient_score(grad, _structure_dims(float_tensor(grad, "grad"), dim))


def _make_registry() -> dict[str, Criterion]:
    noise = frozenset({CriterionInput.NOISE_POSTERIOR})
    odds = frozenset({"log_prior_odds"})
    u_score, u_remove = _neg(log_posterior_odds(delta_f_loguniform)), _nonneg(log_posterior_odds(delta_f_loguniform))
    bmrs_u = Criterion(
        "bmrs_u",
        True,
        u_score,
        u_remove,
        noise,
        MappingProxyType({"p1": 8, "p2": 23}),
        frozenset({"p1", "p2"}) | odds,
        description="BMRS_U: dF for reduced prior LogU[-p2 ln2, -p1 ln2] (p1=8, p2=23)",
    )
    n_odds = log_posterior_odds(delta_f_lognormal)
    bmrs_n = Criterion(
        "bmrs_n",
        True,
        _neg(n_odds),
        _nonneg(n_odds),
        noise,
        accepts=frozenset({"reduced_loc", "reduced_var"}) | odds,
        description="BMRS_N: dF for reduced prior LogN[A,B](A, 1e-12)",
    )
    preset = MappingProxyType({"log_prior_odds": BMRS_LOG_PRIOR_ODDS})
    joint = log_posterior_odds(_bmrs_joint)
    gaussian = log_posterior_odds(_gaussian_bmr)
    entries = [
        replace(bmrs_n, name="bmrs", options=preset,
                description="the default: BMRS_N with prior odds sqrt(2 pi):1 for removal "
                            "(log_prior_odds = 0.5 log 2pi)"),
        bmrs_n,
        replace(bmrs_n, name="bmrs_n_code", options=preset,
                description="BMRS_N as in the authors' code (no -0.5 log 2pi), i.e. "
                            "log_prior_odds = 0.5 log 2pi: removes at BF >= 0.40"),
        bmrs_u,
        replace(bmrs_u, name="bmrs_u8", description="BMRS_U with p1=8, p2=23"),
        replace(
            bmrs_u,
            name="bmrs_u4",
            options=MappingProxyType({"p1": 4, "p2": 23}),
            description="BMRS_U with p1=4, p2=23",
        ),
        replace(
            bmrs_u,
            name="bmrs_u_off",
            options=MappingProxyType({"p1": 8, "p2": None}),
            description="reduced prior LogU[A, -p1 ln2] over the whole off range (p1=8)",
        ),
        Criterion(
            "bmrs_joint",
            True,
            _neg(joint),
            _nonneg(joint),
            frozenset({CriterionInput.NOISE_POSTERIOR, CriterionInput.GAUSSIAN_WEIGHTS}),
            accepts=frozenset({"reduced_var", "reduced_scale"}) | odds,
            description="joint BMR of a structure's noise (BMRS_N) and its Gaussian incoming "
                        "weights (to N(0, 1e-16))",
        ),
        Criterion(
            "snr",
            False,
            snr,
            None,
            noise,
            default_threshold=1.0,
            description="signal-to-noise ratio E[theta]/std[theta]; remove below 1",
        ),
        Criterion(
            "e_theta",
            False,
            expected_theta,
            None,
            noise,
            default_threshold=0.1,
            description="expected noise E[theta]; remove below 0.1",
        ),
        Criterion(
            "l2",
            False,
            _l2,
            None,
            frozenset({CriterionInput.INCOMING_WEIGHTS}),
            description="L2 norm of incoming weights; prune to a target fraction",
        ),
        Criterion(
            "grad",
            False,
            _grad,
            None,
            frozenset({CriterionInput.WEIGHT_GRADIENTS}),
            description="norm of the weight gradient; prune to a target fraction",
        ),
        Criterion(
            "gaussian_bmr",
            True,
            _neg(gaussian),
            _nonneg(gaussian),
            frozenset({CriterionInput.GAUSSIAN_WEIGHTS}),
            accepts=frozenset({"reduced_scale"}) | odds,
            description="Gaussian BMR to N(0, 1e-16), dF summed over a structure's weights",
        ),
    ]
    return {c.name: c for c in entries}


_REGISTRY: dict[str, Criterion] = _make_registry()

#: Read-only view of the registered criteria, by name.
CRITERIA: Mapping[str, Criterion] = MappingProxyType(_REGISTRY)


def register_criterion(criterion: Criterion, *, overwrite: bool = False) -> None:
    """Add a criterion to :data:`CRITERIA` (``ValueError`` if the name is taken)."""
    if not isinstance(criterion, Criterion):
        raise TypeError(f"criterion must be a Criterion, got {type(criterion).__name__}")
    if criterion.name in _REGISTRY and not overwrite:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    _REGISTRY[criterion.name] = criterion


def get_criterion(name: str, **options: Any) -> Criterion:
    """Look a criterion up by name, optionally binding options.

    ``get_criterion("bmrs_u", p1=4)`` equals ``get_criterion("bmrs_u4")``;
    ``get_criterion("snr", threshold=2.0)`` changes the default threshold.

    Raises:
        ValueError: unknown name (the message lists the known ones), or ``threshold`` for a
            criterion without one.
        TypeError: an option the criterion does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    crit = _REGISTRY[key]
    if "threshold" in options:
        thr = options.pop("threshold")
        if crit.threshold_free or crit.default_threshold is None:
            raise ValueError(f"criterion {crit.name!r} takes no threshold")
        crit = replace(crit, default_threshold=check_number(thr, "threshold"))
    unknown = set(options) - crit.accepts
    if unknown:
        raise TypeError(
            f"criterion {crit.name!r} got unexpected option(s) {sorted(unknown)}; "
            f"options: {sorted(crit.accepts)}"
        )
    if options:
        crit = replace(crit, options=MappingProxyType({**crit.options, **options}))
    return crit
