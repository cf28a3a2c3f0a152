"""Aurora's constrained argmax by Newton's method on its dual, without a polar factor.

Problem (M tall, m > n, t = n/m): maximize ⟨M, U⟩ subject to UᵀU = I_n and ‖U_i‖² = t for every row.
With multipliers S (n×n symmetric) and λ (one per row), the Lagrangian
⟨M, U⟩ − ½⟨S, UᵀU − I⟩ − ½ Σ_i λ_i (‖U_i‖² − t) is concave in U where every S + λ_i I ≻ 0, and is
maximized there by U_i = M_i (S + λ_i I)⁻¹. The dual function

    d(S, λ) = ½ Σ_i M_i (S + λ_i I)⁻¹ M_iᵀ + ½ tr S + (t/2) Σ_i λ_i

is convex and bounds ⟨M, U⟩ from above for every feasible U. Here it is minimized as follows.

1. Row weights D, carried across optimizer steps (``balance_steps`` Gram steps as in Aurora, 2 by
   default): C = (D M)ᵀ D M = V diag(c) Vᵀ gives the start S = V diag(√c) Vᵀ / median(D) and, for
   free, vanilla Aurora's point polar(D M) = D M V diag(c^{-1/2}) Vᵀ, whose row norms are the
   leverage scores of D M: one Gram balancing step of D for the next optimizer step.
2. Evaluation at S = V diag(s) Vᵀ: R = M V; per row, λ_i solves Σ_j R_ij² / (s_j + λ_i)² = t
   (a fixed number of scalar Newton steps on f^{-1/2}, which is concave, from last step's λ_i at
   the start point, carried across optimizer steps, or from an estimate); W_ij = 1/(s_j + λ_i),
   Y = R ∘ W (the rows of U = Y Vᵀ have ‖U_i‖² = t), G = YᵀY. The dual's gradient in S is ½(I − G).
3. ``newton_steps`` times: Newton's step on S with λ re-solved, L(Δ) = G − I, from ``cg_steps``
   preconditioned conjugate-gradient iterations (see :func:`_newton_operator`); accepted only where
   the dual does not rise, and after a rejected step the next one is half as long.
4. Finish: one balancing step E of the rows of Y, then U = E Y (Yᵀ E² Y)^{-1/2} Vᵀ, the polar factor
   of E Y Vᵀ from an n×n eigendecomposition. No polar factor of an m×n matrix is computed.

Where the dual is not tight (rows spread over several decades: at the optimum some S + λ_i I is
indefinite) the margin min_i(λ_i + s_min) collapses. Such matrices, and any whose result is
non-finite, has rows off by more than ``FALLBACK_ROW_ERROR`` or scores below vanilla Aurora's point,
get vanilla Aurora's point instead, and the count of such fallbacks is added to a tensor.
Everything runs a fixed number of iterations with masked updates: no host synchronization.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..matrices import TINY, all_finite, row_norms, tall
from ..polar import gram_ridge
from ..sync import host_syncs_allowed
from .aurora import (
    BALANCE_BETA,
    _active_mean,
    active_rows,
    balancing_step,
    initial_row_weights,
    leverage,
)

#: iterations of the scalar Newton solve for each λ_i at the start point (from last optimizer step's
#: λ_i, or an estimate on the first step) and after a Newton step on S (from the λ_i before it); the
#: final balancing step corrects what is left of the rows. Measured on drifting 1024×256 and 64×16
#: momenta (Gaussian, and 4 rows ×1e3): 3 at the start let the first, cold step of a 64×16 matrix
#: fall back to vanilla Aurora; 4 do not, and more change the gap by less than 1e-7
ROW_SOLVE_STEPS = 4
ROW_RESOLVE_STEPS = 2
#: a matrix whose smallest λ_i + s_min falls below this fraction of median(λ) + mean(s) has a dual
#: that is (nearly) not tight: its point falls back to vanilla Aurora's
MARGIN_FLOOR = 2e-3
#: the dual point falls back to vanilla Aurora's where max_i |‖U_i‖²/t − 1| exceeds this
FALLBACK_ROW_ERROR = 1e-2


def _frobenius(A: Tensor, B: Tensor) -> Tensor:
    return (A * B).sum(dim=(-2, -1), keepdim=True)


def _solve_rows(R: Tensor, s: Tensor, t: Tensor, active: Tensor, start: Tensor | None, steps: int) -> Tensor:
    """μ_i > 0 with Σ_j R_ij² / (s_j + μ_i)² = t for each row: ``[B, m, 1]`` (s [B, 1, n] ≥ 0, s_min = 0).

    Bounds: ‖R_i‖/√t − s_max ≤ μ_i ≤ ‖R_i‖/√t. Newton on g(μ) = f(μ)^{-1/2}, concave and increasing,
    from ``start`` (where positive) or ‖R_i‖/√t − Σ_j R_ij² s_j/‖R_i‖², clamped to the bounds; it
    may overshoot once, to the left, and then increases monotonically to the root. Inactive rows
    get μ = 1 (their R is zero).
    """
    R2 = R.square()
    norm = R2.sum(dim=-1, keepdim=True).sqrt()
    upper = norm / t.sqrt()
    floor = 1e-7 * upper.clamp_min(TINY)  # μ = 0 is the pole of the smallest s: stay off it
    lower = (upper - s.amax(dim=-1, keepdim=True)).clamp_min(floor)
    upper = upper.clamp_min(floor)
    # without a start: the root if every s_j were the R_i-weighted mean of s, within the bounds
    guess = upper - (R2 * s).sum(dim=-1, keepdim=True) / norm.square().clamp_min(TINY)
    if start is not None:
        guess = torch.where(start > 0, start, guess)
    mu = torch.minimum(torch.maximum(guess, lower), upper)
    for _ in range(steps):
        W = (s + mu).reciprocal_()
        T = (R2 * W).mul_(W)
        f = T.sum(dim=-1, keepdim=True)
        h = T.mul_(W).sum(dim=-1, keepdim=True)
        mu = mu + (f.clamp_min(TINY).pow(1.5) / t.sqrt() - f) / h.clamp_min(TINY)
        mu = torch.minimum(torch.maximum(mu, lower), upper)
    return torch.where(active, mu, torch.ones_like(mu))


class _Evaluation:
    """The dual at S = V diag(s̃ + s_min) Vᵀ, shifted so that s̃_min = 0 and μ_i = λ_i + s_min."""

    def __init__(self, R: Tensor, s: Tensor, t: Tensor, active: Tensor, start: Tensor | None, steps: int) -> None:
        self.R, self.s = R, s
        self.mu = _solve_rows(R, s, t, active, start, steps)
        self.W = active / (s + self.mu)
        self.Y = R * self.W
        self.G = self.Y.mT @ self.Y
        # ½ Σ_ij R_ij² W_ij + ½ Σ_j s̃_j + (t/2) Σ_i μ_i (the constant shift cancels since m·t = n)
        self.dual = 0.5 * (
            _frobenius(R * self.W, R) + s.sum(dim=-1, keepdim=True) + t * (self.mu * active).sum(dim=-2, keepdim=True)
        )


def _newton_operator(E: _Evaluation) -> Callable[[Tensor], Tensor]:
    """Δ ↦ L(Δ), minus the derivative of G along S + Δ with each λ_i moved to keep ‖U_i‖² = t.

    A1 = YΔ, c_i = ⟨A1_i ∘ W_i, Y_i⟩ / ⟨W_i, Y_i²⟩, B = ((A1 − c∘Y) ∘ W)ᵀ Y, L(Δ) = B + Bᵀ: the dual's
    Hessian in S (symmetric positive semi-definite; S + cI with λ − c is its null direction).
    """
    Y, W = E.Y, E.W
    denominator = (W * Y.square()).sum(dim=-1, keepdim=True).clamp_min(TINY)

    def apply(delta: Tensor) -> Tensor:
        A1 = Y @ delta
        c = (A1 * W * Y).sum(dim=-1, keepdim=True) / denominator
        B = ((A1 - c * Y) * W).mT @ Y
        return B + B.mT

    return apply


def _newton_direction(E: _Evaluation, cg_steps: int) -> Tensor:
    """Δ from ``cg_steps`` preconditioned CG iterations on L(Δ) = G − I (diagonal preconditioner
    A + Aᵀ, A = Wᵀ(Y∘Y), the diagonal of L without the λ coupling)."""
    apply = _newton_operator(E)
    A = E.W.mT @ E.Y.square()
    precondition = 1 / (A + A.mT).clamp_min(TINY)
    eye = torch.eye(E.G.size(-1), dtype=E.G.dtype, device=E.G.device)
    delta = torch.zeros_like(E.G)
    residual = E.G - eye
    z = precondition * residual
    p = z
    rz = _frobenius(residual, z)
    for _ in range(cg_steps):
        Lp = apply(p)
        alpha = rz / _frobenius(p, Lp).clamp_min(TINY)
        delta = delta + alpha * p
        residual = residual - alpha * Lp
        z = precondition * residual
        rz_new = _frobenius(residual, z)
        p = z + (rz_new / rz.clamp_min(TINY)) * p
        rz = rz_new
    return delta


def _finite_or(A: Tensor, fill: Tensor | float) -> Tensor:
    """A where all of its matrix is finite, else ``fill`` (an eigendecomposition raises on NaN)."""
    return torch.where(all_finite(A, (-2, -1), keepdim=True), A, fill)


def _inverse_gram(C: Tensor, ridge: float) -> Tensor:
    """(C + ridge·tr(C)·I)⁻¹ [B, n, n] of a Gram matrix C by Cholesky; NaN where it fails."""
    trace = C.diagonal(dim1=-2, dim2=-1).sum(dim=-1)[..., None, None]
    eye = torch.eye(C.size(-1), dtype=C.dtype, device=C.device)
    L, info = torch.linalg.cholesky_ex(_finite_or(C + ridge * trace.clamp_min(TINY) * eye, eye))
    failed = (info > 0)[..., None, None]
    # a failed factorization leaves zeros on L's diagonal, on which cholesky_inverse raises
    return torch.where(failed, torch.nan, torch.cholesky_inverse(torch.where(failed, eye, L)))


def _gram_leverage(X: Tensor, D: Tensor, ridge: float) -> Tensor:
    """Leverage scores of D·X [B, m, 1]: ℓ_i = d_i² X_i (Xᵀ D² X)⁻¹ X_iᵀ (NaN where Cholesky fails)."""
    DX = D * X
    return ((X @ _inverse_gram(DX.mT @ DX, ridge)) * X).sum(dim=-1, keepdim=True) * D.square()


def _inverse_sqrt(H: Tensor, ridge: float) -> Tensor:
    """H^{-1/2} of symmetric positive (semi-)definite H [B, n, n], eigenvalues floored at ridge·tr H."""
    eye = torch.eye(H.size(-1), dtype=H.dtype, device=H.device)
    h, Q = torch.linalg.eigh(_finite_or(H, eye))
    floor = ridge * h.sum(dim=-1, keepdim=True).clamp_min(TINY)
    return (Q * h.clamp_min(floor).rsqrt().unsqueeze(-2)) @ Q.mT


#: a Newton step is accepted unless the dual rises by more than this fraction: the rounding error of
#: a sum of m·n positive terms (fp32: measured changes of ±3e-7 at 1024×256 that are noise)
DUAL_ROUNDOFF = {torch.float32: 1e-5, torch.float64: 1e-12}


def dual_aurora_tall(
    X: Tensor,
    *,
    scaling: Tensor | None,
    multipliers: Tensor | None,
    fallbacks: Tensor | None,
    balance_steps: int,
    newton_steps: int,
    cg_steps: int,
    eps: float,
    row_steps: tuple[int, int] = (ROW_SOLVE_STEPS, ROW_RESOLVE_STEPS),
) -> Tensor:
    """The dual-Newton direction for a tall X [B, m, n] (m > n), in X's dtype (fp32 or float64).

    ``scaling`` [B, m]: the row weights r = D·‖X_i‖ of the last step (1 = cold start), overwritten.
    ``multipliers`` [B, m]: μ_i = λ_i + s_min at the last step's start point, where this step's λ
    solves start (0: from an estimate), overwritten.
    ``balance_steps``: Gram balancing steps of D before the eigendecomposition.
    ``fallbacks`` [B]: incremented where vanilla Aurora's point is returned instead.
    ``row_steps``: Newton iterations of each λ_i solve, at the start point and after a Newton step.
    """
    dtype = X.dtype
    ridge = gram_ridge(dtype)  # the relative eigenvalue floor
    norms = row_norms(X)
    active = active_rows(norms, eps)
    X = X * active
    norms = norms * active
    t = X.size(-1) / active.sum(dim=-2, keepdim=True).clamp_min(1).to(dtype)
    D = initial_row_weights(norms, active, scaling)
    for _ in range(balance_steps):
        lev = _gram_leverage(X, D, ridge)
        step = balancing_step(lev, _active_mean(lev, active), BALANCE_BETA["gram"])
        D = D * torch.nan_to_num(step, nan=1.0, posinf=1.0) * active
        D = D / D.amax(dim=-2, keepdim=True).clamp_min(TINY)

    # S = C^{1/2} / median(D) and vanilla Aurora's point polar(D X), from one eigendecomposition of C
    DX = D * X
    eye = torch.eye(X.size(-1), dtype=dtype, device=X.device)
    c, V = torch.linalg.eigh(_finite_or(DX.mT @ DX, eye))
    del DX
    c = c.clamp_min(ridge * c.sum(dim=-1, keepdim=True).clamp_min(TINY))
    R = X @ V
    DRc = D * R * c.rsqrt().unsqueeze(-2)  # vanilla Aurora's point is DRc·Vᵀ
    lev = DRc.square().sum(dim=-1, keepdim=True)  # the leverage of D·X: its row norms²
    vanilla_row_error = ((lev / t - 1).abs() * active).amax(dim=-2, keepdim=True)
    if scaling is not None:  # one more balancing step, for the next optimizer step
        step = torch.nan_to_num(
            balancing_step(lev, _active_mean(lev, active), BALANCE_BETA["gram"]), nan=1.0, posinf=1.0
        )
        r = D * step * active * norms
        scaling.copy_((r / _active_mean(r, active).clamp_min(TINY)).squeeze(-1))
    d_median = torch.where(active, D, torch.nan).nanmedian(dim=-2, keepdim=True).values
    d_median = torch.nan_to_num(d_median, nan=1.0).clamp_min(TINY)  # nan: no active row
    s = c.sqrt().unsqueeze(-2) / d_median  # [B, 1, n]
    previous_mu = None if multipliers is None else multipliers.unsqueeze(-1).to(dtype)
    E = _Evaluation(R, s - s[..., :1], t, active, previous_mu, row_steps[0])
    V_start, mu_start = V, E.mu

    step_size = torch.ones_like(E.dual)
    for _ in range(newton_steps):
        delta = step_size * _finite_or(_newton_direction(E, cg_steps), 0.0)
        s_new, Q = torch.linalg.eigh(torch.diag_embed(E.s.squeeze(-2)) + delta)
        candidate = _Evaluation(E.R @ Q, (s_new - s_new[..., :1]).unsqueeze(-2), t, active, E.mu, row_steps[1])
        # [B, 1, 1]; a dual that rises by more than round-off means the step overshot
        better = candidate.dual <= E.dual * (1 + DUAL_ROUNDOFF[dtype])
        step_size = torch.where(better, 1.0, 0.5 * step_size)  # damped: the next step is half as long
        V = torch.where(better, V @ Q, V)
        for name in ("R", "mu", "W", "Y", "G", "dual"):
            setattr(E, name, torch.where(better, getattr(candidate, name), getattr(E, name)))
        E.s = torch.where(better, candidate.s, E.s)

    # finish: one balancing step of the rows of Y, then the polar factor of E·Y·Vᵀ. E: e_i = (t/ℓ_i)^β
    # with the diagonal Newton step β = 0.5/(1 − t) capped near 1 (:func:`balancing_exponent`; the
    # leverage's Hessian has the diagonal ℓ_i(1 − ℓ_i) ≈ t(1 − t)). Measured on a drifting 96×24 momentum
    # with 4 rows ×1e3 (30 steps): max row error 1.6e-2 with β = 0.5 (one fallback), 5.1e-3 with the
    # Newton step; on the other 29 steps it halved the row error.
    lev_Y = ((E.Y @ _inverse_gram(E.G, ridge)) * E.Y).sum(dim=-1, keepdim=True)
    balance = torch.nan_to_num(balancing_step(lev_Y, t, None), nan=1.0, posinf=1.0)
    EY = E.Y * balance * active
    U = EY @ (_inverse_sqrt(EY.mT @ EY, ridge) @ V.mT)

    # safeguards: the margin of the dual, finiteness, the rows, and the objective against vanilla's
    # (where vanilla's rows are within the tolerance: an infeasible point may score higher)
    s_mean = E.s.mean(dim=-1, keepdim=True)
    mu_median = torch.where(active, E.mu, torch.nan).nanmedian(dim=-2, keepdim=True).values
    margin = torch.where(active, E.mu, torch.inf).amin(dim=-2, keepdim=True) / (mu_median + s_mean).clamp_min(TINY)
    row_error = ((leverage(U) / t - 1).abs() * active).amax(dim=-2, keepdim=True)
    vanilla_value = (DRc * R).sum(dim=(-2, -1), keepdim=True)  # ⟨X, DRc·Vᵀ⟩ = ⟨R, DRc⟩
    ok = (
        (margin >= MARGIN_FLOOR)
        & (row_error <= FALLBACK_ROW_ERROR)
        & ((_frobenius(X, U) >= vanilla_value) | (vanilla_row_error > FALLBACK_ROW_ERROR))
        & all_finite(U, (-2, -1), keepdim=True)
    )
    if multipliers is not None:
        # the μ of the start point S = C^{1/2}/median(D), which the next step starts from again
        multipliers.copy_(torch.where(active & mu_start.isfinite(), mu_start, 0).squeeze(-1))
    if fallbacks is not None:  # a matrix without active rows is zero either way
        fallbacks.add_((~ok & active.any(dim=-2, keepdim=True)).reshape(fallbacks.shape).to(fallbacks.dtype))
    if host_syncs_allowed(ok) and bool(ok.all()):  # CPU, eager: vanilla's point is not needed
        return U * active
    return torch.where(ok, U, DRc @ V_start.mT) * active


def dual_aurora_direction(
    M: Tensor,
    *,
    orthogonalize: Callable[[Tensor], Tensor],
    scaling: Tensor | None = None,
    multipliers: Tensor | None = None,
    fallbacks: Tensor | None = None,
    balance_steps: int = 2,
    newton_steps: int = 2,
    cg_steps: int = 2,
    eps: float = 1e-7,
    row_steps: tuple[int, int] = (ROW_SOLVE_STEPS, ROW_RESOLVE_STEPS),
) -> Tensor:
    """Aurora's constrained argmax for momentum matrices M [B, m, n] by dual Newton (module docstring).

    Square: polar(M). Wide: the tall rule on Mᵀ, transposed back. The multipliers are computed in
    float64 for float64 M and in fp32 otherwise, whatever the polar backend and its dtype (bf16
    included): ``orthogonalize`` serves square matrices only. ``scaling`` and ``multipliers``
    [B, max(m, n)] are the warm starts of the row weights and of the row multipliers (updated in
    place; ones and zeros for a cold start); ``fallbacks`` [B] counts the matrices that
    got vanilla Aurora's point because the dual scheme could not certify its own.
    """
    if M.size(-2) == M.size(-1):
        return orthogonalize(M)
    X, transposed = tall(M)
    work_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    Xw = X.to(work_dtype)
    Xw = Xw / torch.linalg.matrix_norm(Xw, keepdim=True).clamp_min(TINY)
    U = dual_aurora_tall(
        Xw,
        scaling=scaling,
        multipliers=multipliers,
        fallbacks=fallbacks,
        balance_steps=balance_steps,
        newton_steps=newton_steps,
        cg_steps=cg_steps,
        eps=eps,
        row_steps=row_steps,
    ).to(M.dtype)
    return U.mT if transposed else U
