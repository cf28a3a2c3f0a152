"""Aurora: the steepest-descent direction that is semi-orthogonal and row-uniform (Tilde Research, 2026).

For a tall momentum M (m > n) Aurora seeks U* = argmax ⟨M, U⟩ subject to UᵀU = I_n and
‖U_i‖² = n/m for every row i. The balanced polar factor U = polar(D·M), with D a positive diagonal
chosen so that the rows of U come out uniform, is feasible and is what the reference computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._spectral import SpectralOptimizer, _check_float, _check_int, spectral_kwargs_doc

#: smallest positive value used where a norm or a leverage score is divided by (fp32-safe)
TINY = 1e-30


def tall(M: Tensor) -> tuple[Tensor, bool]:
    """Return M as a tall-or-square matrix batch, and whether it was transposed."""
    if M.size(-2) < M.size(-1):
        return M.mT, True
    return M, False


def active_rows(X: Tensor, eps: float) -> Tensor:
    """Rows of X [B, m, n] whose norm exceeds eps × the largest row norm: ``[B, m, 1]`` bool.

    Rows below that (starved neurons have exactly-zero gradient rows) cannot be balanced: any
    D·X keeps them at zero, so they are left out of the balancing and get a zero update.
    """
    row_norm = X.norm(dim=-1, keepdim=True)
    return row_norm > eps * row_norm.amax(dim=-2, keepdim=True)


def leverage(U: Tensor) -> Tensor:
    """Leverage scores ℓ_i = ‖U_i‖² of each row: ``[B, m, 1]``."""
    return U.square().sum(dim=-1, keepdim=True)


def row_uniformity_error(U: Tensor, active: Tensor | None = None) -> Tensor:
    """max_i |ℓ_i / mean(ℓ) − 1| over the active rows, per matrix: ``[B]`` (0 = exactly uniform)."""
    lev = leverage(U)
    if active is None:
        active = torch.ones_like(lev, dtype=torch.bool)
    mean = (lev * active).sum(dim=-2, keepdim=True) / active.sum(dim=-2, keepdim=True).clamp_min(1)
    return ((lev / mean.clamp_min(TINY) - 1).abs() * active).amax(dim=(-2, -1))


def balanced_polar(
    X: Tensor,
    *,
    orthogonalize: Callable[[Tensor], Tensor],
    steps: int,
    beta: float,
    eps: float,
    tolerance: float = 0.0,
) -> Tensor:
    """Vanilla Aurora on a tall X [B, m, n]: U = polar(D·X) with D balanced by fixed-point steps.

    D₀ = 1/‖X_i‖; U_k = polar(D_k X); D_{k+1} = D_k·(ℓ̄/ℓ_i(U_k))^β, ℓ̄ the mean leverage over the
    active rows (the reference uses n/m; both give the same U, since polar ignores D's scale, but
    ℓ̄ stays right when rows are inactive or X is rank-deficient). ``steps`` counts polar factors
    computed; iteration stops early once the rows are within ``tolerance`` of uniform.
    """
    active = active_rows(X, eps)
    D = active / X.norm(dim=-1, keepdim=True).clamp_min(TINY)
    for k in range(steps):
        U = orthogonalize(D * X)
        if k == steps - 1:
            break
        lev = leverage(U)
        mean = (lev * active).sum(dim=-2, keepdim=True) / active.sum(dim=-2, keepdim=True).clamp_min(1)
        step = (mean / lev.clamp_min(TINY)).pow(beta)
        if tolerance > 0:  # matrices already balanced keep their D, so each matrix of a batch
            done = row_uniformity_error(U, active) <= tolerance  # gets what it would get alone
            if bool(done.all()):
                break
            step = torch.where(done.view(-1, 1, 1), torch.ones_like(step), step)
        D = D * step * active
    return U


def aurora_direction(
    M: Tensor, *, orthogonalize: Callable[[Tensor], Tensor], balance_steps: int, balance_beta: float, eps: float
) -> Tensor:
    """Aurora's update direction for momentum matrices M [B, m, n].

    Square: polar(M) (rows are uniform already). Wide: the tall rule on Mᵀ, transposed back.
    """
    if M.size(-2) == M.size(-1):
        return orthogonalize(M)
    X, transposed = tall(M)
    U = balanced_polar(X, orthogonalize=orthogonalize, steps=balance_steps, beta=balance_beta, eps=eps)
    return U.mT if transposed else U


class Aurora(SpectralOptimizer):
    algorithm = "aurora"

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.05,
        weight_decay: float = 0.025,
        *,
        balance_steps: int = 2,
        balance_beta: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params, lr=lr, weight_decay=weight_decay, balance_steps=balance_steps, balance_beta=balance_beta, **kwargs
        )

    def _validate_algorithm(self, group: dict[str, Any]) -> None:
        _check_int("balance_steps", group["balance_steps"], 1)
        _check_float("balance_beta", group["balance_beta"], 0.0, 1.0, low_open=True)

    def _direction(self, M, state, group, orthogonalize):
        return aurora_direction(
            M,
            orthogonalize=orthogonalize,
            balance_steps=group["balance_steps"],
            balance_beta=group["balance_beta"],
            eps=group["eps"],
        )


Aurora.__doc__ = rf"""Aurora: leverage-aware spectral descent (Tilde Research, arXiv 2606.27715).

    For a tall momentum matrix M (m > n) the update is a semi-orthogonal U (UᵀU = I) whose rows all
    have ‖U_i‖² = n/m, so every neuron gets the same share of the update:

    .. math::
        D_0 = \mathrm{{diag}}(1/\lVert M_i\rVert),\quad U_k = \mathrm{{polar}}(D_k M),\quad
        D_{{k+1}} = D_k\,\mathrm{{diag}}\big((\bar\ell/\lVert U_{{k,i}}\rVert^2)^{{β}}\big),\quad
        W \leftarrow (1-ηλ)W - η\,s(m,n)\,U_K

    Differences from :class:`Muon`:

    - tall matrices: row-uniform leverage (no starved rows); square: identical to Muon;
      wide: the rule applied to Mᵀ (columns balanced);
    - rows of M that are exactly zero are left out of the balancing and get zero update;
    - costs ``balance_steps`` polar factors per tall matrix.

    For hidden weight matrices; embeddings, the output head and 1-D parameters belong in an
    ``"adamw"`` group (see :func:`aurora_opt.param_groups`).

    Args:{spectral_kwargs_doc(0.05, 0.025)}
        balance_steps (int): K, the number of polar factors computed while balancing (default: 2).
        balance_beta (float): β, the damping exponent of the balancing step (default: 0.5).
"""
