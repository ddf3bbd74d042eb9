"""The Laplace posterior N(w*, P^-1): marginal variances, joint row / column BMR, the reduced posterior mean."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._enums import parse_enum
from pyro_prune.laplace.curvature import HessianStructure, _Curvature, _likelihood, _positive
from pyro_prune.laplace.evidence import LaplaceEvidence, _maximise, _prepare, _result
from pyro_prune.models.base import Likelihood

__all__ = ["FLAT_RTOL", "LaplacePosterior", "laplace_posterior"]

#: a curvature eigenvalue at most this times its block's largest is a flat direction of the likelihood
FLAT_RTOL = 1e-9

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
    #: unit-noise curvature matrix of the parameters with a dense block (biases under ``"kron"``)
    outer: dict[str, Tensor] = field(default_factory=dict, repr=False)
    #: the whole unit-noise curvature (``"full"``) and each parameter's positions in it
    full: Tensor | None = field(default=None, repr=False)
    index: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def _scales(self) -> tuple[float, float]:
        """``(1/s^2, 1/sigma^2)``: the prior and observation precisions."""
        obs = 1.0 if self.evidence.obs_scale is None else self.evidence.obs_scale
        return 1.0 / self.evidence.prior_scale**2, 1.0 / obs**2

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

    def column_delta_f(self, name: str, block: int = 1) -> Tensor:
        r"""Gaussian BMR of setting groups of ``block`` input columns of weight ``name`` to 0, jointly.

        The transpose of :meth:`row_delta_f`. Rotated by ``U^T`` on the output side, the
        posterior of a Kronecker block is independent across the rotated rows ``k``, each
        with covariance ``C_k = V diag(1 / d_k) V^T`` over the input columns (``d_kl =
        b_k a_l / (n sigma^2) + 1/s^2``). A group ``S`` of columns (one input neuron: a single
        column; a flattened channel: its ``H*W`` columns; a convolution's input channel: its
        kernel) is removed jointly, the Savage-Dickey limit of BMR to ``N(0, r^2 I)``:

        .. math:: \Delta F_S = \tfrac12 \sum_k \big[|S| \log s^2 - \log\det C_{k,SS}
            - \tilde m_{kS}^\top C_{k,SS}^{-1} \tilde m_{kS}\big], \qquad \tilde m = U^\top M.

        Returns one value per group of the weight flattened to ``[out, -1]`` (groups of
        ``block`` consecutive columns).
        """
        if name not in self.kron:
            raise ValueError(f"{name!r} has no Kronecker factors (use hessian='kron')")
        eb, qb, ea, qa, n = self.kron[name]
        prior_prec, obs_prec = self._scales()
        inv = 1.0 / (torch.outer(eb, ea) * (obs_prec / n) + prior_prec)  # [out, in]
        width = qa.shape[0]
        if isinstance(block, bool) or not isinstance(block, int) or block < 1 or width % block:
            raise ValueError(f"block must be a positive divisor of the {width} columns of {name!r}, got {block!r}")
        m = qb.T @ self.mean[name].double().reshape(qb.shape[0], -1).to(qb.device)  # [out, in]
        groups = width // block
        q = qa.reshape(groups, block, width)
        out = torch.zeros(groups, dtype=torch.float64, device=qb.device)
        for k in range(inv.shape[0]):  # one rotated row at a time keeps memory at groups x block^2
            cov = torch.einsum("gbl,l,gcl->gbc", q, inv[k], q)
            chol = torch.linalg.cholesky(cov)
            mk = m[k].reshape(groups, block, 1)
            z = torch.linalg.solve_triangular(chol, mk, upper=False)
            log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            out += 0.5 * (-block * math.log(prior_prec) - log_det - z.square().sum((1, 2)))
        return out

    def flat_directions_at_prior(self, rtol: float = FLAT_RTOL) -> LaplacePosterior:
        r"""This posterior with its mean moved to the prior mean (0) where the likelihood is flat.

        The Laplace approximation is centred at the mode. Along a direction in which the
        data's curvature is zero (an eigenvector of the GGN with eigenvalue 0: the incoming
        weights of a ReLU unit no training example activates, the outgoing weights of a unit
        whose output is always 0) the likelihood is constant, so the posterior there is the
        prior and its mode is the prior mean 0; the weights a trained network leaves there
        (weight decay had not finished) say nothing about the data. This projects the mean
        out of the null space of each curvature block: ``m <- m - Q_0 Q_0^T m`` over the
        eigenvectors whose eigenvalue is at most ``rtol`` times the block's largest (for a
        Kronecker block the products ``b_k a_l``). The blocks are single parameters (with
        ``"full"``, each parameter's diagonal block), whose flat directions in a trained ReLU
        network are the weights from inputs that are 0 on every training example (any step
        leaves the layer's outputs unchanged), the incoming weights and bias of a unit no
        example activates (both go to 0, and the unit stays off) and the shift of all logits
        (which the softmax ignores): the training predictions do not change. Directions flat
        only across layers (the ReLU rescaling symmetry) are curved off the tangent and are
        left alone. The covariance is unchanged.
        """
        rtol = float(rtol)
        if not (0.0 <= rtol < 1.0):
            raise ValueError(f"rtol must be in [0, 1), got {rtol!r}")
        mean = {name: m.double().clone() for name, m in self.mean.items()}

        def project(vec: Tensor, eig: Tensor, q: Tensor) -> Tensor:
            flat = eig <= rtol * eig.max().clamp_min(0.0)
            if not bool(flat.any()):
                return vec
            q0 = q[:, flat]
            return vec - q0 @ (q0.T @ vec)

        if self.full is not None:  # each parameter's own block: see the docstring
            for name, idx in self.index.items():
                eig, q = torch.linalg.eigh(self.full[idx][:, idx])
                mean[name] = project(mean[name].reshape(-1), eig, q).reshape(self.mean[name].shape)
        else:
            for name, m in mean.items():
                if name in self.kron:
                    eb, qb, ea, qa, _ = self.kron[name]
                    prod = torch.outer(eb, ea)
                    flat = prod <= rtol * prod.max().clamp_min(0.0)
                    if bool(flat.any()):
                        rot = qb.T @ m.reshape(qb.shape[0], -1) @ qa
                        mean[name] = (m.reshape(qb.shape[0], -1) - qb @ (rot * flat) @ qa.T).reshape(m.shape)
                elif name in self.outer:
                    eig, q = torch.linalg.eigh(self.outer[name])
                    mean[name] = project(m.reshape(-1), eig, q).reshape(m.shape)
                else:  # diagonal: the curvature is 1/variance - 1/s^2 (unit noise times 1/sigma^2)
                    prior_prec, _ = self._scales()
                    data_prec = (1.0 / self.variance[name].double() - prior_prec).clamp_min(0.0)
                    mean[name] = m.masked_fill(data_prec <= rtol * data_prec.max(), 0.0)
        return LaplacePosterior(mean=mean, variance=self.variance, evidence=self.evidence, kron=self.kron,
                                outer=self.outer, full=self.full, index=self.index)

    def reduced_mean(self, removed: Mapping[str, Tensor]) -> dict[str, Tensor]:
        r"""The posterior mean of the kept weights given the removed ones at 0.

        Under the Gaussian posterior :math:`\mathcal N(m, P^{-1})`, fixing the removed
        weights :math:`R` at 0 leaves the kept ones :math:`K` with the conditional mean

        .. math:: m_K' = m_K + P_{KK}^{-1} P_{KR}\, m_R

        (the reduced posterior of Bayesian model reduction with the reduced prior
        :math:`\delta(w_R)`; for one removed weight the Optimal-Brain-Surgeon update
        :math:`m - \Sigma_{:,i} m_i / \Sigma_{ii}`). Per curvature block:

        * Kronecker ``P = B (x) A / (n sigma^2) + I/s^2`` with whole rows and input columns
          removed (kept rows ``R``, columns ``C``): ``P_KR m_R`` is ``B[R,:] Z A[:,C] /
          (n sigma^2)`` with ``Z`` the removed entries of ``M`` (the prior term has no
          kept-removed part), and ``P_KK = B_RR (x) A_CC / (n sigma^2) + I/s^2`` is solved in
          the eigenbases of ``B_RR`` and ``A_CC``: exact, ``O(out^3 + in^3)``. Other removal
          patterns of a Kronecker block are refused (``ValueError``).
        * a dense block (a bias under ``"kron"``) and the full matrix (``"full"``, across all
          parameters): the linear solve;
        * a diagonal block: no cross-covariance, the kept means stay.

        Args:
            removed: parameter name to a bool tensor of its shape, True = removed (fixed
                at 0). Parameters not named keep all their weights.

        Returns:
            parameter name to the reduced mean (removed entries 0) for every parameter of
            the posterior.
        """
        prior_prec, obs_prec = self._scales()
        masks: dict[str, Tensor] = {}
        for name, r in removed.items():
            if name not in self.mean:
                raise ValueError(f"removed names {name!r}, which is not a parameter of the posterior")
            if not isinstance(r, Tensor) or r.dtype != torch.bool or r.shape != self.mean[name].shape:
                raise ValueError(f"removed[{name!r}] must be a bool tensor of shape {tuple(self.mean[name].shape)}")
            masks[name] = r.to(self.mean[name].device)
        out = {name: m.double().clone() for name, m in self.mean.items()}
        if self.full is not None:
            r_all = torch.cat([masks[n].reshape(-1) if n in masks else torch.zeros(self.mean[n].numel(), dtype=torch.bool)
                               for n in self.index])
            if not bool(r_all.any()):
                return out
            m_all = torch.cat([out[n].reshape(-1) for n in self.index])
            order = torch.cat(list(self.index.values()))
            m_full = torch.empty_like(m_all)
            r_full = torch.empty_like(r_all)
            m_full[order], r_full[order] = m_all, r_all
            precision = self.full * obs_prec + prior_prec * torch.eye(self.full.shape[0], dtype=torch.float64)
            k_full = ~r_full
            delta = torch.linalg.solve(precision[k_full][:, k_full], precision[k_full][:, r_full] @ m_full[r_full])
            m_full[k_full] += delta
            m_full[r_full] = 0.0
            for name, idx in self.index.items():
                out[name] = m_full[idx].reshape(self.mean[name].shape)
            return out
        for name, r in masks.items():
            if not bool(r.any()):
                continue
            m = out[name]
            if name in self.kron:
                out[name] = self._kron_reduced_mean(name, m, r, prior_prec, obs_prec)
            elif name in self.outer:
                keep = ~r.reshape(-1)
                flat = m.reshape(-1)
                precision = self.outer[name] * obs_prec + prior_prec * torch.eye(flat.numel(), dtype=torch.float64)
                new = torch.zeros_like(flat)
                new[keep] = flat[keep] + torch.linalg.solve(precision[keep][:, keep],
                                                            precision[keep][:, ~keep] @ flat[~keep])
                out[name] = new.reshape(m.shape)
            else:  # diagonal: the kept weights are independent of the removed ones
                out[name] = m.masked_fill(r, 0.0)
        return out

    def _kron_reduced_mean(self, name: str, m: Tensor, r: Tensor, prior_prec: float, obs_prec: float) -> Tensor:
        eb, qb, ea, qa, n = self.kron[name]
        mat = m.reshape(qb.shape[0], -1)
        removed = r.reshape(mat.shape)
        rows, cols = ~removed.all(1), ~removed.all(0)
        if not torch.equal(~removed, rows[:, None] & cols[None, :]):
            raise ValueError(f"the reduced mean of the Kronecker block {name!r} needs whole rows and input "
                             "columns removed (single weights: use hessian='full' or 'diag')")
        bmat = (qb * eb) @ qb.T
        amat = (qa * ea) @ qa.T
        z = mat.masked_fill(~removed, 0.0)
        y = bmat[rows] @ z @ amat[:, cols] * (obs_prec / n)
        eb_k, qb_k = torch.linalg.eigh(bmat[rows][:, rows])
        ea_k, qa_k = torch.linalg.eigh(amat[cols][:, cols])
        delta = qb_k @ ((qb_k.T @ y @ qa_k) / (torch.outer(eb_k, ea_k) * (obs_prec / n) + prior_prec)) @ qa_k.T
        new = torch.zeros_like(mat)
        kept = mat[rows][:, cols] + delta
        new[rows.nonzero().squeeze(1)[:, None], cols.nonzero().squeeze(1)[None, :]] = kept
        return new.reshape(m.shape)


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
    curvature = prepared.curvature
    mean = {b.name: b.param.detach().clone() for b in curvature.blocks}
    outer = {b.name: b.matrix for b in curvature.blocks if b.kind == "outer"}
    index = {b.name: b.index for b in curvature.blocks if b.kind == "full"}
    return LaplacePosterior(mean=mean, variance=variance, evidence=evidence, kron=kron, outer=outer,
                            full=curvature.full, index=index)


