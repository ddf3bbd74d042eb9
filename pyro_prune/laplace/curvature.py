"""The GGN curvature of a network from the backend (ASDL), per parameter block, and its eigenvalues."""


from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pyro_prune._checks import check_dataset, check_number
from pyro_prune._enums import HessianStructure, parse_enum
from pyro_prune.models.base import IGNORE_INDEX, Likelihood, categorical_nll, correct_and_counted

__all__ = ["KRON_LAYERS", "SUPPORTED_LAYERS", "HessianStructure", "backend_available", "require_backend"]

_LOG_2PI = math.log(2.0 * math.pi)
_ATTR = "_pyro_prune_curvature"

#: module kinds whose trainable parameters the curvature backend handles
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Embedding,
)
#: module kinds that get Kronecker factors under ``hessian="kron"`` (the rest: their diagonal)
KRON_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def backend_available() -> bool:
    """True when the curvature backend (ASDL, ``pip install asdfghjkl``) can be imported."""
    try:
        import asdl  # noqa: F401
    except ImportError:
        return False
    return True


def require_backend() -> Any:
    """The curvature backend's module (ASDL); an ``ImportError`` saying how to install it if missing."""
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


class _CountedTokenLogits(nn.Module):
    """A language model's logits of the counted tokens of one batch, ``[K, C]``: the token
    axes flattened into rows and the tokens labelled ``-100`` dropped, so the curvature
    backend sees one categorical observation per counted token (the likelihood is the sum
    over them, as :func:`~pyro_prune.models.base.categorical_nll`'s)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.counted: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        assert self.counted is not None
        return out.reshape(-1, out.shape[-1])[self.counted.reshape(-1)]


@dataclass
class _KronInputs:
    """K-FAC's input factor of a token model's Linear layers over the rows that carry curvature.

    The backend's factor ``A = sum_r a_r a_r^T`` and normaliser ``n`` run over every row a
    Linear layer is applied to, also the rows of ignored tokens (label ``-100``). A row whose
    output no counted token depends on carries no curvature (its ``B`` term is 0), yet it
    would still shape ``A`` and ``n``: a per-position model's K-FAC would then differ from the
    K-FAC of a classifier on the counted tokens alone, and a causal model's from the same
    model on sequences cut before their ignored end. :meth:`observe` finds those rows with one
    probe per batch (the gradient of a random projection of the counted tokens' logits), and
    ``A`` and ``n`` sum over the other rows: the rows of counted tokens and the rows of
    ignored tokens that reach a counted one (a prompt read by later tokens through attention).
    """

    layers: list[nn.Module]
    factor: dict[nn.Module, Tensor] = field(default_factory=dict)
    rows: dict[nn.Module, int] = field(default_factory=dict)
    dropped: dict[nn.Module, int] = field(default_factory=dict)

    def observe(self, target: nn.Module, xb: Tensor, counted: Tensor, seed: int) -> None:
        """Add one batch's rows to ``factor`` and ``rows`` (``counted``: its labels' mask)."""
        calls: list[tuple[nn.Module, Tensor, Tensor]] = []

        def record(module: nn.Module, args: tuple, out: Tensor) -> None:
            calls.append((module, args[0].detach(), out))

        hooks = [m.register_forward_hook(record) for m in self.layers]
        try:
            logits = target(xb)
        finally:
            for hook in hooks:
                hook.remove()
        live = [c for c in calls if c[2].requires_grad]
        if not live:
            return
        g = torch.Generator(device="cpu").manual_seed(seed)
        probe = torch.randn(logits.shape, generator=g, dtype=logits.dtype).to(logits.device)
        grads = torch.autograd.grad((logits * probe).sum(), [c[2] for c in live], allow_unused=True)
        for (module, a, _out), grad in zip(live, grads):
            rows = a.reshape(-1, a.shape[-1]).double()
            keep = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
            if tuple(a.shape[:-1]) == tuple(counted.shape):  # one row per token: its label says
                reached = torch.zeros_like(keep) if grad is None else grad.reshape(len(rows), -1).ne(0).any(1)
                keep = counted.reshape(-1).to(rows.device) | reached
            kept = rows[keep]
            self.factor[module] = self.factor.get(module, 0) + kept.T @ kept
            self.rows[module] = self.rows.get(module, 0) + int(keep.sum())
            self.dropped[module] = self.dropped.get(module, 0) + int((~keep).sum())


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
    require_backend()
    from asdl.fisher import FisherConfig, get_fisher_maker
    from asdl.grad_maker import LOSS_CROSS_ENTROPY, LOSS_MSE
    from asdl.matrices import FISHER_EXACT

    modules = _parameters(net)
    loss_type = LOSS_CROSS_ENTROPY if kind is Likelihood.CATEGORICAL else LOSS_MSE
    config = FisherConfig(fisher_type=FISHER_EXACT, loss_type=loss_type, fisher_shapes=_shapes(structure),
                          data_size=1, fisher_attr=_ATTR)
    tokens = kind is Likelihood.CATEGORICAL and y.dim() > 1
    target: Any = _CountedTokenLogits(net) if tokens else net
    maker = get_fisher_maker(target, config)
    ll = torch.zeros((), dtype=torch.float64)
    rss = torch.zeros((), dtype=torch.float64)
    correct = 0
    num_obs = 0
    was_training = net.training
    net.eval()
    # token labels under K-FAC: the input factor and normaliser of each Linear over its rows
    # that carry curvature (see _KronInputs)
    inputs = _KronInputs([m for m in net.modules() if isinstance(m, nn.Linear)]) if (
        tokens and structure is HessianStructure.KRON) else None
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # ASDL registers module backward hooks that torch flags as deprecated
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.nn\.modules\.module")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.nn\.modules\.module")
            for i, (xb, yb) in enumerate(_batches(x, y, batch_size)):
                counted = yb != IGNORE_INDEX
                if tokens:  # the GGN of the counted tokens' logits [K, C], tokens as rows
                    target.counted = counted
                if inputs is not None:
                    inputs.observe(target, xb, counted, seed=i)
                maker.setup_model_call(target, xb)
                out, _ = maker.forward_and_backward(accumulate=i > 0)
                out = out.detach()
                if kind is Likelihood.CATEGORICAL:
                    if tokens:  # the counted tokens' logits and labels, [K, C] and [K]
                        yb = yb[counted]
                    elif out.dim() != 2:
                        raise ValueError(f"a categorical net must output logits [batch, classes] (or "
                                         f"[batch, tokens, classes] for token labels), got {tuple(out.shape)}")
                    ll -= categorical_nll(out.double(), yb).sum()
                    right, _ = correct_and_counted(out, yb)
                    correct, num_obs = correct + int(right.sum()), num_obs + len(yb)
                else:
                    if out.shape != yb.shape:
                        raise ValueError(f"a gaussian net's output {tuple(out.shape)} must match the targets' "
                                         f"shape {tuple(yb.shape)}")
                    rss += (out.double() - yb.double()).square().sum()
                    num_obs += yb.numel()
        blocks: list[_Block] = []
        full: Tensor | None = None
        if structure is HessianStructure.FULL:
            stats = getattr(target, _ATTR, None)
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
                            a, n = kron.A.detach().double(), len(x)
                            if inputs is not None and module in inputs.rows:
                                n = inputs.rows[module]
                                if inputs.dropped[module]:  # else the backend's own factor
                                    a = inputs.factor[module].to(a.device)
                            blocks.append(_Block(name, p, "kron", kron_b=b, kron_a=a, kron_n=n))
                        else:
                            blocks.append(_Block(name, p, "outer", matrix=b))
                    else:
                        value = getattr(stats.diag, pname, None)
                        if value is None or value.numel() != p.numel():
                            raise ValueError(f"the curvature backend returned no diagonal for {name!r}")
                        blocks.append(_Block(name, p, "diag", diag=value.detach().double().reshape(p.shape)))
    finally:
        net.train(was_training)
        for module in target.modules():
            if hasattr(module, _ATTR):
                delattr(module, _ATTR)
    curvature = _Curvature(
        structure=structure, blocks=blocks, full=full, log_likelihood=float(ll), rss=float(rss),
        num_obs=num_obs, num_data=len(x),
        accuracy=correct / max(num_obs, 1) if kind is Likelihood.CATEGORICAL else None,
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


