"""Riemannian Aurora: the argmax of ⟨M, U⟩ over semi-orthogonal, row-uniform U, by manifold ascent.

Vanilla Aurora stops at a feasible point polar(D·M). This module climbs from there on the
intersection of the Stiefel manifold {UᵀU = I} and the row constraint {‖U_i‖² = ℓ̄}, along the
projection of M onto its tangent space, and retracts each step with a balanced polar factor.
Every accepted step raises ⟨M, U⟩, so the result is never worse than vanilla Aurora's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ..matrices import TINY, all_finite, matrix_shape, row_norms, tall
from ..polar import default_polar_dtype
from ._spectral import (
    SpectralOptimizer,
    _check_int,
    host_syncs_allowed,
    spectral_kwargs_doc,
)
from .aurora import (
    BALANCE_BETA,
    BALANCE_MODES,
    BALANCE_TOLERANCE,
    active_rows,
    balanced_polar,
    gram_dtype_for,
    leverage,
)

#: max |UᵀU − I| of a start point that counts as semi-orthogonal: fp32 polar factors are within ~1e-5
#: and bf16 ones ~1e-2, while a missing direction (rank-deficient momentum) shows as ~1
FULL_RANK_TOLERANCE = 0.25
#: CG freezes a system once ‖r‖ ≤ CG_RESIDUAL_FACTOR·ε·‖q‖, ε the machine epsilon of the working
#: dtype: U, and so the operator, is known only to about that precision (a polar factor is), and CG
#: iterated past it loses conjugacy (measured in fp32 on 64×16: p·Ap = −3.5e-12 at iteration 16, then
#: α ≈ 1e19 and NaN when the tolerance was a float64 level, 1e-12 relative)
CG_RESIDUAL_FACTOR = 100.0

#: the first ascent step is t = min(n/⟨X, U⟩, FIRST_STEP·√n/‖Z‖_F): exact on a sphere, but capped at
#: 10 % of ‖U‖_F. Measured in fp32 (Polar Express) with 4 rows of M 1e3–1e6× the rest: uncapped, the
#: sphere step overshoots by ~30×, the first 5 steps are all rejected halvings and 5 steps end at
#: vanilla Aurora's objective (64×16 to 256×64, 2 seeds); capped at 0.1, 5 steps come within 3.5e-3
#: (relative) of 40 steps, 10 within 9.5e-4; on Gaussian M the cap never binds (results unchanged)
FIRST_STEP = 0.1
#: Polar backends too inexact to retract onto {UᵀU = I}: Newton–Schulz leaves singular values in
#: about (0.7, 1.2) (measured max |UᵀU − I| 0.3–0.4 on 64×16 and 96×48), so every start point fails
#: FULL_RANK_TOLERANCE and the ascent never runs
INEXACT_POLARS = ("newton_schulz",)
#: Polar dtypes too coarse for the ascent: bf16 factors carry row errors of tens of percent (measured
#: max row error 0.2 at the start on 64×16 Gaussian and dominant-row momenta, 0.4–0.6 after 10–20
#: ascent steps), so the ascent would trade row uniformity for objective rather than climb
COARSE_POLAR_DTYPES = (torch.bfloat16, torch.float16)


def ascent_blocker(polar: Any, polar_dtype: torch.dtype | None, device: torch.device) -> str | None:
    """Why the Riemannian ascent cannot run with this polar backend and dtype on ``device`` (None: it can)."""
    if isinstance(polar, str) and polar in INEXACT_POLARS:
        return f"polar={polar!r} is too inexact (singular values only roughly 1) to retract onto UᵀU = I"
    dtype = polar_dtype or default_polar_dtype(device)
    if dtype in COARSE_POLAR_DTYPES:
        return f"polar factors in {dtype} are too coarse (row errors of tens of percent) for the ascent"
    return None


def _batched_cg(apply_A: Callable[[Tensor], Tensor], b: Tensor, steps: int) -> Tensor:
    """Conjugate gradients for A x = b, A symmetric positive semi-definite, batched over rows of b.

    ``steps`` masked iterations: a system freezes (keeps its x) once its residual is at the working
    precision (see ``CG_RESIDUAL_FACTOR``) or as soon as p·Ap ≤ 0 (A, built from an inexact U, is
    not positive along p). The loop stops early only where the host may read device values.
    """
    tolerance = (CG_RESIDUAL_FACTOR * torch.finfo(b.dtype).eps) ** 2
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(dim=-1, keepdim=True)
    threshold = tolerance * rr
    running = rr > threshold
    early_exit = host_syncs_allowed(b)
    for _ in range(steps):
        if early_exit and not bool(running.any()):
            break
        Ap = apply_A(p)
        pAp = (p * Ap).sum(dim=-1, keepdim=True)
        running = running & (pAp > 0)
        alpha = torch.where(running, rr / torch.where(running, pAp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum(dim=-1, keepdim=True)
        beta = torch.where(running, rr_new / torch.where(running, rr, 1.0), 0.0)
        p = torch.where(running, r + beta * p, p)
        rr = torch.where(running, rr_new, rr)
        running = running & (rr > threshold)
    return x


def tangent_projection(X: Tensor, U: Tensor, *, cg_steps: int) -> Tensor:
    """Project X onto the tangent space at U of {UᵀU = I} ∩ {‖U_i‖² fixed}; all ``[B, m, n]``.

    Z = X − U·sym(UᵀX) − (I − UUᵀ)ΛU, where the row multipliers λ solve
    (diag(ℓ) − P∘P)λ = q with P = UUᵀ, ℓ = diag(P), q_i = ⟨X_i − (U·sym(UᵀX))_i, U_i⟩;
    P∘P is applied without forming it: ((P∘P)λ)_i = U_iᵀ(Uᵀ diag(λ) U)U_i.
    """
    UtX = U.mT @ X
    G = X - U @ (0.5 * (UtX + UtX.mT))
    lev = leverage(U).squeeze(-1)  # [B, m]
    q = (G * U).sum(dim=-1)  # [B, m]

    def apply_A(lam: Tensor) -> Tensor:
        K = (U * lam.unsqueeze(-1)).mT @ U  # [B, n, n]
        return lev * lam - ((U @ K) * U).sum(dim=-1)

    lam = _batched_cg(apply_A, q, cg_steps)
    K = (U * lam.unsqueeze(-1)).mT @ U
    return G - lam.unsqueeze(-1) * U + U @ K


def riemannian_aurora_direction(
    M: Tensor,
    *,
    orthogonalize: Callable[[Tensor], Tensor],
    ascent_steps: int,
    balance_steps: int,
    cg_steps: int,
    eps: float,
    balance: str = "gram",
    gram_dtype: torch.dtype | None = None,
    skipped_ascents: Tensor | None = None,
    stalled_ascents: Tensor | None = None,
) -> Tensor:
    """Riemannian Aurora's direction for momentum matrices M [B, m, n] (any scale, any shape).

    X = M/‖M‖_F (so the result does not depend on the gradient's scale); start at the balanced
    polar factor; then ``ascent_steps`` times: Z = tangent projection of X, candidate
    retract(U + t·Z), kept only where it raises ⟨X, U⟩ (t grows by 1.5 then, else halves).
    The first t is n/⟨X, U⟩, the step that would be exact on a sphere, capped at a move of
    ``FIRST_STEP``·‖U‖_F. ``balance`` picks how the balanced polar factor is found: ``"gram"``
    (Gram/Cholesky leverage, one polar factor per retraction, at most ``balance_steps`` Gram steps)
    or ``"polar"`` (at most ``balance_steps`` polar factors). ``skipped_ascents`` /
    ``stalled_ascents`` [B] (optional, incremented in place):
    +1 where the start point is not semi-orthogonal, so the ascent cannot run (rank-deficient M, an
    inexact polar factor), and where it ran but accepted no step.
    """
    if M.size(-2) == M.size(-1):
        return orthogonalize(M)
    X, transposed = tall(M)
    X = X / torch.linalg.matrix_norm(X, keepdim=True).clamp_min(TINY)
    active = active_rows(row_norms(X), eps)
    X = X * active

    def retract(Y: Tensor) -> Tensor:
        """The balanced polar factor of Y: rows within BALANCE_TOLERANCE of uniform."""
        U, _ = balanced_polar(
            Y,
            orthogonalize=orthogonalize,
            balance=balance,
            steps=balance_steps,
            beta=BALANCE_BETA[balance],
            eps=eps,
            gram_dtype=gram_dtype,
            tolerance=BALANCE_TOLERANCE,
        )
        return U * active

    def objective(U: Tensor) -> Tensor:
        return (X * U).sum(dim=(-2, -1), keepdim=True)

    U = retract(X)
    # The ascent moves on {UᵀU = I}; a rank-deficient X gives a partial isometry (UᵀU ≠ I), which the
    # tangent projection does not describe, so such matrices keep their balanced start point.
    eye = torch.eye(X.size(-1), dtype=U.dtype, device=U.device)
    full_rank = (U.mT @ U - eye).abs().amax(dim=(-2, -1), keepdim=True) <= FULL_RANK_TOLERANCE
    value = objective(U)
    t = X.size(-1) / value.clamp_min(TINY)
    accepted = torch.zeros_like(full_rank)
    for k in range(ascent_steps):
        Z = tangent_projection(X, U, cg_steps=cg_steps)
        if k == 0:  # the first step moves U by at most FIRST_STEP of its norm ‖U‖_F = √n
            limit = FIRST_STEP * X.size(-1) ** 0.5 / torch.linalg.matrix_norm(Z, keepdim=True).clamp_min(TINY)
            t = torch.where(torch.isfinite(limit), torch.minimum(t, limit), t)
        # a non-finite step is never retracted (an SVD backend raises on it) and never accepted
        finite = all_finite(Z, (-2, -1), keepdim=True) & torch.isfinite(t)
        candidate = retract(torch.where(finite, U + t * Z, U))
        candidate_value = objective(candidate)
        better = (candidate_value > value) & full_rank & finite & torch.isfinite(candidate_value)
        U = torch.where(better, candidate, U)
        value = torch.where(better, candidate_value, value)
        t = torch.where(better, 1.5 * t, 0.5 * t)
        accepted = accepted | better
    if ascent_steps > 0 and skipped_ascents is not None:
        skipped_ascents.add_((~full_rank).view(-1).to(skipped_ascents.dtype))
    if ascent_steps > 0 and stalled_ascents is not None:
        stalled_ascents.add_((full_rank & ~accepted).view(-1).to(stalled_ascents.dtype))
    return U.mT if transposed else U


class RiemannianAurora(SpectralOptimizer):
    algorithm = "riemannian_aurora"
    stacked_state = ("skipped_ascents", "stalled_ascents")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        weight_decay: float = 0.025,
        *,
        ascent_steps: int = 10,
        balance_steps: int = 12,
        cg_steps: int = 20,
        balance: str = "gram",
        polar_dtype: torch.dtype | None = torch.float32,
        **kwargs: Any,
    ) -> None:
        if balance not in BALANCE_MODES:
            raise ValueError(f"invalid balance: {balance!r} (expected one of {BALANCE_MODES})")
        # fp32 polar factors by default on every device: the ascent needs UᵀU = I to fp32 accuracy,
        # which bf16 (the other optimizers' CUDA default) cannot give, and would be skipped
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            polar_dtype=polar_dtype,
            algorithm_defaults={
                "ascent_steps": ascent_steps,
                "balance_steps": balance_steps,
                "cg_steps": cg_steps,
                "balance": balance,
            },
            **kwargs,
        )

    def _validate_algorithm(self, group: dict[str, Any]) -> None:
        _check_int("ascent_steps", group["ascent_steps"], 0)
        _check_int("balance_steps", group["balance_steps"], 1)
        _check_int("cg_steps", group["cg_steps"], 1)
        if group["balance"] not in BALANCE_MODES:
            raise ValueError(f"invalid balance: {group['balance']!r} (expected one of {BALANCE_MODES})")
        devices = {p.device for p in group["params"]}
        reasons = {ascent_blocker(group["polar"], group["polar_dtype"], device) for device in devices} - {None}
        if group["ascent_steps"] > 0 and reasons:
            warnings.warn(
                f"RiemannianAurora: {'; '.join(sorted(reasons))}. The ascent is skipped for this param "
                "group, so its update is vanilla Aurora's balanced polar factor (counted per matrix in "
                "state['skipped_ascents']). Use polar='polar_express', 'simple_quintic' or 'svd' with "
                "polar_dtype=torch.float32 or torch.float64.",
                RuntimeWarning,
                stacklevel=7,  # the line that constructs the optimizer
            )

    def _init_state(self, p, state, group):
        super()._init_state(p, state, group)
        batch, m, n = matrix_shape(p.shape)
        if m != n:
            # per matrix of the batch: steps whose ascent did not run / ran without accepting a step
            state["skipped_ascents"] = torch.zeros(batch, dtype=torch.float32, device=p.device)
            state["stalled_ascents"] = torch.zeros(batch, dtype=torch.float32, device=p.device)

    def _direction(self, M, state, group, orthogonalize):
        blocked = ascent_blocker(group["polar"], group["polar_dtype"], M.device) is not None
        if blocked and "skipped_ascents" in state and group["ascent_steps"] > 0:
            state["skipped_ascents"].add_(1)
        return riemannian_aurora_direction(
            M,
            orthogonalize=orthogonalize,
            ascent_steps=0 if blocked else group["ascent_steps"],
            balance_steps=group["balance_steps"],
            cg_steps=group["cg_steps"],
            eps=group["eps"],
            balance=group["balance"],
            gram_dtype=gram_dtype_for(group["polar"], group["polar_dtype"]),
            skipped_ascents=state.get("skipped_ascents"),
            stalled_ascents=state.get("stalled_ascents"),
        )


RiemannianAurora.__doc__ = rf"""Riemannian Aurora: Aurora's constrained argmax, solved rather than approximated.

    Differences from :class:`Aurora`: starts at the balanced polar factor (balanced until rows are
    within 0.1 % of uniform, at most ``balance_steps`` Gram steps or, with ``balance="polar"``,
    polar factors; one polar factor per balancing with ``"gram"``) and then takes up to
    ``ascent_steps`` monotone Riemannian ascent steps on ⟨M, U⟩ over the intersection of the
    Stiefel and row-uniform manifolds (tangent projection with row multipliers from ``cg_steps``
    conjugate-gradient steps; retraction by the balanced polar factor). Invariant to the scale of
    the gradient; any shape and dtype. Several times the cost of Aurora.

    The ascent needs accurate polar factors: with ``polar="newton_schulz"`` or a bf16/fp16 polar
    dtype (the other optimizers' default on CUDA; this one's is fp32 on every device) it is skipped,
    with a RuntimeWarning at construction, and the update is Aurora's balanced polar factor. Per tall
    or wide matrix, ``state["skipped_ascents"]`` counts steps whose ascent did not run (that, or a
    rank-deficient momentum) and
    ``state["stalled_ascents"]`` steps whose ascent accepted no step (float32 tensors, no host sync).

    Args:{spectral_kwargs_doc(0.02, 0.025)}
        ascent_steps (int): Riemannian ascent steps (default: 10; 0 gives the balanced polar
            factor). Each costs one CG solve (≤ ``cg_steps`` × 2 m·n² flops) and one balanced polar
            factor. Measured in fp32 and float64 against 40 steps: on Gaussian momenta 10 steps
            converge; with 4 rows of M 1e3–1e6× the rest (64×16 to 256×64) 5 steps end within
            3.5e-3 of 40 steps' objective (relative), 10 within 9.5e-4.
        balance_steps (int): at most this many Gram steps (``"gram"``) or polar factors
            (``"polar"``) per balancing (default: 12).
        cg_steps (int): conjugate-gradient steps for the row multipliers (default: 20).
        balance (str): ``"gram"`` (default) or ``"polar"``: how each balanced polar factor is found.
"""
