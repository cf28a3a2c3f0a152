"""Aurora: the steepest-descent direction that is semi-orthogonal and row-uniform (Tilde Research, 2026).

For a tall momentum M (m > n) Aurora seeks U* = argmax ⟨M, U⟩ subject to UᵀU = I_n and
‖U_i‖² = n/m for every row i. The balanced polar factor U = polar(D·M), with D a positive diagonal
chosen so that the rows of U come out uniform, is feasible and is what Aurora computes.

Two ways to find D:

- ``"gram"`` (default): the row norms of polar(D·M) are the leverage scores of D·M,
  ℓ_i = d_i² M_iᵀ (Mᵀ D² M)⁻¹ M_i, which the n×n Gram matrix gives by one Cholesky factorization
  (about 3mn² flops against ~28mn² for a 7-step Polar Express). D is balanced on those, then ONE
  polar factor is computed.
- ``"polar"``: the reference's loop, one full polar factor per balancing step.

Both update D ← D·(ℓ̄/ℓ_i)^β. In the weights w = d² this is a diagonally preconditioned Newton step
on the convex function log det(Mᵀ W M) − ℓ̄·Σ log w_i (its gradient in log w is ℓ − ℓ̄, its Hessian
diag(ℓ) − P∘P, P the projector onto the range of D·M): β = 0.5 preconditions with diag(ℓ) (the
reference's step), β = 0.5/(1 − ℓ̄) with the Hessian's diagonal (the "gram" default, see
:func:`balancing_exponent`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ..matrices import TINY, all_finite, gram, matmul_fp32, matrix_shape, row_norms, tall
from ..polar import (
    default_polar_dtype,
    polar_after_first_pass,
    reduces_polar,
    reducible,
    shifted_cholesky,
    solve_factor_right,
)
from ..sync import host_syncs_allowed
from ._spectral import SpectralOptimizer, _check_float, _check_int, spectral_kwargs_doc

BALANCE_MODES = ("gram", "polar")
#: defaults of (balance_steps, balance_beta, balance_tolerance) per mode. "polar": the reference
#: (K = 2 polar factors, β = 0.5). "gram": β from :func:`balancing_exponent` (``None``); from a cold
#: start small matrices need more steps than large ones, so where host synchronization is allowed
#: (eager on the CPU) "gram" runs up to 8 steps and stops once the rows are within 1e-3: one step
#: when the warm start is already balanced. ``None`` steps mean that automatic choice; see
#: GRAM_STEPS_SYNC_FREE. "polar"'s β = 0.5, measured on a 256×64 matrix with row norms spread over
#: three decades (exact SVD polar): 1e-5 row error in 10 polar factors where β = 1 oscillates and is
#: still at 3e-3.
BALANCE_BETA: dict[str, float | None] = {"polar": 0.5, "gram": None}
#: max |ℓ_i/ℓ̄ − 1| at which a balancing may stop (Gram mode by default; Riemannian Aurora's
#: start point and retractions in both modes)
BALANCE_TOLERANCE = 1e-3
MODE_DEFAULTS: dict[str, tuple[int | None, float | None, float]] = {
    "polar": (2, BALANCE_BETA["polar"], 0.0),
    "gram": (None, BALANCE_BETA["gram"], BALANCE_TOLERANCE),
}
#: 1 − ℓ̄ is floored here in the Newton exponent 0.5/(1 − ℓ̄), so β ≤ 1.02: n/m = 1/2 itself keeps its
#: β = 1 unclamped (its computed ℓ̄ falls on either side of 1/2 by rounding, and a clamp there would
#: make the result depend on which), nearly square matrices are capped at about 1. The
#: Newton step is only right near balance: uncapped, a nearly square matrix (ℓ̄ ≥ 0.9, β ≥ 5) with two
#: nearly equal rows, which can never share out their direction, has its D blown apart in one step and
#: its polar factor loses directions (200×196, 3 Gram steps: 25 singular values below 0.5 at β ≤ 25, the
#: smallest 0.87 at β ≤ 5, 0.99 at β ≤ 1 as with the fixed β = 0.65)
NEWTON_SLACK_FLOOR = 0.49
GRAM_STEPS_WITH_EARLY_EXIT = 8
#: Gram steps run, all of them, where the step may not synchronize (CUDA, compiled): with the warm
#: start over a drifting momentum (M ← 0.95·M + 0.05·G, rows spread over two decades, fresh noise of
#: each row's size) 3 steps leave the rows of polar(D·M) within 9e-6 (1024×256), 1.3e-5 (768×256)
#: and 3.4e-4 (96×48) in fp32 after the first step, which from a cold start leaves up to 1.4e-3
#: (96×48); the row correction removes the rest (at that step's cost in UᵀU − I).
GRAM_STEPS_SYNC_FREE = 3
#: the same where the polar factor is computed in bf16/fp16 (the CUDA default): there its own error
#: dominates whatever the rows start from. Measured with a harsher drift (a fresh gradient with new row
#: scales each step, momentum 0.95, Nesterov), ‖UᵀU − I‖₂ of the corrected bf16 result after 1/2/3
#: steps: 1.5e-2/1.3e-2/1.3e-2 (768×192), 1.3e-2/1.2e-2/1.2e-2 (1024×256), 6.2e-2/2.8e-2/2.6e-2
#: (96×48); in fp32 3 steps gain 10× over 2 (8.0e-5 against 7.9e-4 at 768×192).
GRAM_STEPS_SYNC_FREE_LOW_PRECISION = 2

#: the row correction rescales each row of U by a factor within [1/ROW_CORRECTION_MAX,
#: ROW_CORRECTION_MAX]. After a converged balancing the factors are within 1 ± 0.04 (bf16 Polar
#: Express: row errors up to 8e-2; a few dominant input features in fp32: up to 5e-2). The 2 Gram
#: steps of CUDA's default leave more on the momenta of early training, whose leverage the balancing
#: reaches slowly (each Gram step multiplied the spread by 0.2–0.45 on 96×32 and 128×32 momenta of a
#: d 32 GPT, where 1024×256 ones of a d 256 GPT went from 1.4 to 1e-3 in three): replaying 4 steps
#: of 10 recordings (GPTs d 32–256 trained by Muon for 3–60 steps, bf16 Polar Express, bf16 Gram
#: products), the factors needed reached 1.46 and 1/1.29, beyond 1.25 in 6 of 304 matrix-steps,
#: which left rows up to 7e-2 off with a clamp at 1.25; the distance to exact Aurora was the same
#: with the factors unclamped. Far larger imbalances come from a polar factor far from an isometry
#: (rank-deficient momentum in bf16/fp16, whose rounding noise the polar iteration lifts), where
#: rescaling fully would move that noise onto the signal directions: the clamp bounds that.
ROW_CORRECTION_MAX = 1.5

LOW_PRECISION = (torch.bfloat16, torch.float16)
#: values of Aurora's ``gram_matmul_dtype``: None (bf16/fp16 when the polar factor is), full precision
#: (fp32: the Gram dtype itself, float64 where that is float64), or inputs rounded to bf16/fp16.
#: Measured on the CPU with the same arithmetic (benchmarks/cpu/gram_precision.md: bf16 polar factor,
#: 2 sync-free Gram steps), the direction's mean distance to exact float64 Aurora is the same with
#: bf16 Gram products as with fp32 ones (7.655e-2 against 7.645e-2 on the momenta of a trained GPT
#: d=256, 3.569e-2 against 3.568e-2 on the bench's synthetic drift); rounding the Gram matrix itself
#: to bf16 doubled it on the trained momenta (1.443e-1), hence the fp32 sums
GRAM_MATMUL_DTYPES = (None, torch.float32, *LOW_PRECISION)


def active_rows(norms: Tensor, eps: float) -> Tensor:
    """Rows whose norm (``norms`` [B, m, 1], :func:`aurora_opt.matrices.row_norms`) exceeds eps × the
    largest: ``[B, m, 1]`` bool.

    Rows below that (starved neurons have exactly-zero gradient rows) cannot be balanced: any
    D·X keeps them at zero, so they are left out of the balancing and get a zero update.
    """
    return norms > eps * norms.amax(dim=-2, keepdim=True)


def leverage(U: Tensor) -> Tensor:
    """Leverage scores ℓ_i = ‖U_i‖² of each row: ``[B, m, 1]``.

    ``vector_norm`` needs no m×n temporary: 0.16 ms against 0.5 ms for a sum of squares on contiguous
    rows (4×1024×256, one CPU thread), though 2.9 ms on a column-major one."""
    return torch.linalg.vector_norm(U, dim=-1, keepdim=True).square()


def _active_mean(values: Tensor, active: Tensor) -> Tensor:
    return (values * active).sum(dim=-2, keepdim=True) / active.sum(dim=-2, keepdim=True).clamp_min(1)


def _leverage_spread(lev: Tensor, mean: Tensor, active: Tensor) -> Tensor:
    """max_i |ℓ_i / ℓ̄ − 1| over the active rows, per matrix: ``[B]``."""
    return ((lev / mean.clamp_min(TINY) - 1).abs() * active).amax(dim=(-2, -1))


def row_uniformity_error(U: Tensor, active: Tensor | None = None) -> Tensor:
    """max_i |ℓ_i / mean(ℓ) − 1| over the active rows, per matrix: ``[B]`` (0 = exactly uniform)."""
    lev = leverage(U)
    if active is None:
        active = torch.ones_like(lev, dtype=torch.bool)
    return _leverage_spread(lev, _active_mean(lev, active), active)


def corrected_rows(U: Tensor, active: Tensor) -> Tensor:
    """Rescale the active rows of U [B, m, n] to the mean leverage: U_i ← U_i·sqrt(ℓ̄/ℓ_i(U)).

    Balancing makes the rows of the *exact* polar factor of D·M uniform; the polynomial backends leave
    small singular values unconverged (and bf16 rounds every entry), so the computed U carries a row
    error of its own: about 2e-2 for Polar Express in fp32 when a few input features dominate, 2e-2
    to 8e-2 in bf16. This final rescaling, done in fp32, makes the rows uniform to fp32 rounding and
    moves UᵀU by about that row error (measured ≤ 6e-4 on top of the polar factor's own error). Each
    factor is clamped to [1/``ROW_CORRECTION_MAX``, ``ROW_CORRECTION_MAX``]; inactive rows are set to zero.
    """
    work = U.float() if U.dtype in (torch.bfloat16, torch.float16) else U
    lev = leverage(work)
    factor = (_active_mean(lev, active) / lev.clamp_min(TINY)).sqrt()
    factor = factor.clamp(1 / ROW_CORRECTION_MAX, ROW_CORRECTION_MAX)
    return (work * (factor * active)).to(U.dtype)


def balancing_exponent(mean: Tensor, beta: float | None) -> Tensor | float:
    """β of the balancing step D ← D·(ℓ̄/ℓ_i)^β: ``beta``, or for ``None`` the diagonal Newton step.

    In the weights w = d² the balancing minimizes the convex log det(Xᵀ W X) − ℓ̄·Σ log w_i; in
    log w its gradient is ℓ − ℓ̄ and its Hessian diag(ℓ) − P∘P (P the projector onto the range of
    D·X), whose diagonal ℓ_i(1 − ℓ_i) is ℓ̄(1 − ℓ̄) at balance: a diagonal Newton step in log d is
    β = 0.5/(1 − ℓ̄) (``mean`` [B, 1, 1] = ℓ̄ = n/m for a full-rank tall matrix), capped near 1 (see
    NEWTON_SLACK_FLOOR). Measured on drifting momenta (fresh noise each step, warm start, tolerance
    1e-3): Gram steps per optimizer step against a fixed β = 0.65 — 512×256: 2.9 vs 6.1, 768×256: 2.6
    vs 3.8, 1024×256: 2.5 vs 2.7, 2048×256: 2.3 vs 3.5, 96×48: 4.0 vs 7.3, 256×192 (β capped near 1):
    8.5 vs 12 (neither converged within 12).
    """
    if beta is not None:
        return beta
    return 0.5 / (1 - mean).clamp_min(NEWTON_SLACK_FLOOR)


def balancing_step(lev: Tensor, mean: Tensor, beta: float | None) -> Tensor:
    """The factor (ℓ̄/ℓ_i)^β of each row's weight in one balancing step (β: :func:`balancing_exponent`)."""
    return (mean / lev.clamp_min(TINY)).pow(balancing_exponent(mean, beta))


def gram_factor(X: Tensor, D: Tensor, matmul_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Z = X L⁻ᵀ [B, m, n] and L [B, n, n] with L Lᵀ = Xᵀ D² X + λI: the Gram step's factorization.

    L comes from :func:`aurora_opt.polar.shifted_cholesky` (λ = GRAM_RIDGE·‖D·X‖_F²); D·Z = (D·X) L⁻ᵀ
    is CholeskyQR's first pass on D·X (:func:`aurora_opt.polar.cholesky_qr_first_pass`). Only one m×n temporary
    is alive at a time (D·X for the Gram matrix, then Z), and with ``matmul_dtype`` its bf16/fp16 copy.
    Without host syncs a failed factorization is retried once at ridge 1: the leverage then leans
    towards the row norms of D·X for that one balancing step.

    ``matmul_dtype`` (bf16 or fp16): the two m×n by n×n products, Xᵀ D² X and X L⁻ᵀ, round their
    inputs to it and accumulate in fp32 (:func:`aurora_opt.matrices.matmul_fp32`: tensor cores on a
    GPU); X L⁻ᵀ then goes through L⁻¹ (a triangular solve of I, n³/3 flops), since a triangular solve
    of X has no such kernel. The factorization stays in fp32.
    """
    DX = D * X
    if matmul_dtype is None:
        C = gram(DX)
        del DX
        L = shifted_cholesky(C)
        return solve_factor_right(X, L), L  # rows L⁻¹ X_i
    DX = DX.to(matmul_dtype)
    C = matmul_fp32(DX.mT, DX).to(X.dtype)
    del DX
    L = shifted_cholesky(C)
    identity = torch.eye(L.size(-1), dtype=L.dtype, device=L.device).expand_as(L)
    L_inv = torch.linalg.solve_triangular(L, identity, upper=False)
    return matmul_fp32(X.to(matmul_dtype), L_inv.mT.to(matmul_dtype)).to(X.dtype), L


def factor_leverage(Z: Tensor, D: Tensor) -> Tensor:
    """Leverage scores ℓ_i = d_i²·‖Z_i‖² of D·X from its :func:`gram_factor` Z: ``[B, m, 1]``."""
    return leverage(Z) * D.square()


def initial_row_weights(norms: Tensor, active: Tensor, scaling: Tensor | None) -> Tensor:
    """D₀ = r_i/‖X_i‖ on the active rows (0 elsewhere), r = ``scaling`` [B, m] where positive (a
    previous step's result: the warm start), else 1; ``norms`` [B, m, 1] are the row norms ‖X_i‖."""
    start = torch.ones_like(norms)
    if scaling is not None:
        previous = scaling.to(norms.dtype).unsqueeze(-1)
        start = torch.where(previous > 0, previous, start)
    return start * active / norms.clamp_min(TINY)


def balanced_polar(
    X: Tensor,
    *,
    orthogonalize: Callable[[Tensor], Tensor],
    balance: str = "gram",
    steps: int,
    beta: float | None,
    eps: float,
    gram_dtype: torch.dtype | None = None,
    gram_matmul_dtype: torch.dtype | None = None,
    scaling: Tensor | None = None,
    tolerance: float = 0.0,
    row_correction: bool = False,
    reduce_polar: bool = False,
) -> tuple[Tensor, Tensor]:
    """Aurora on a tall X [B, m, n]: U = polar(D·X), the diagonal D balanced so the rows of U are uniform.

    D₀ = r/‖X_i‖ with r = ``scaling`` [B, m] (a previous result, for a warm start) or 1 (the
    reference's start), then D ← D·(ℓ̄/ℓ_i)^β over the active rows, ℓ̄ their mean leverage (the
    reference uses n/m; both give the same U, since polar ignores D's scale, but ℓ̄ stays right when
    rows are inactive or X is rank-deficient). The leverage ℓ of D·X comes from

    - ``balance="gram"``: its Gram matrix (:func:`gram_factor`), ``steps`` times, then ONE polar
      factor; the Gram matrices are formed in ``gram_dtype`` (None: float64 for float64 X, else fp32),
      from inputs rounded to ``gram_matmul_dtype`` if given (bf16/fp16, see :func:`gram_factor`);
    - ``balance="polar"``: the row norms of U_k = polar(D_k·X), the reference's loop; ``steps``
      counts the polar factors computed.

    With ``tolerance`` > 0 a matrix whose max |ℓ_i/ℓ̄ − 1| is within it keeps its D, and, where host
    synchronization is allowed, the loop ends once all do. ``row_correction``: finish with
    :func:`corrected_rows`; with a tolerance, where the loop can end early and the polar factor is
    computed directly, it also lets a matrix stop one Gram step earlier, after the step that the last
    two spreads s_{k−1}, s_k predict to land within it (s_k²/s_{k−1} ≤ tolerance, the balancing
    converging linearly), since the correction removes what remains.

    ``reduce_polar`` (``"gram"``, shapes that :func:`aurora_opt.polar.reducible` admits): the polar
    factor is Q·polar(R) with D·X = QR by CholeskyQR2 (:func:`aurora_opt.polar.polar_after_first_pass`),
    whose first pass is the factorization of the Gram step that found the rows balanced (a step ending
    the loop early), or one more Gram factorization where the loop ran all its steps.
    Returns U and the new r = D·‖X_i‖ [B, m], normalized to mean 1 over the active rows.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"invalid balance: {balance!r} (expected one of {BALANCE_MODES})")
    if gram_dtype is None:
        gram_dtype = torch.float64 if X.dtype == torch.float64 else torch.float32
    reduced = reduce_polar and balance == "gram" and reducible(X.shape)
    Xg = X.to(gram_dtype)
    if balance == "gram":  # row-major in the tall orientation (a wide matrix comes as a transposed view):
        # every Gram step's solve and row reduction then reads contiguous rows (256×704: 1.31× Muon's
        # step against 1.43×)
        Xg = Xg.contiguous()
    norms = row_norms(Xg)
    active = active_rows(norms, eps).to(gram_dtype)  # as 0/1 weights: each product with it converts no bool
    D = initial_row_weights(norms, active, scaling)
    factor = None  # the Gram factorization (Z, L) at the current D, kept for the reduced polar factor
    frozen = previous = None  # per matrix: D final; the last spread
    for _ in range(steps if balance == "gram" else steps - 1):  # "polar": the last factor is the result
        if balance == "gram":
            Z, L = gram_factor(Xg, D, gram_matmul_dtype)
            lev = factor_leverage(Z, D)
            factor = (Z, L) if reduced else None
            del Z, L
        else:
            lev = leverage(orthogonalize(D.to(X.dtype) * X)).to(gram_dtype)
        mean = _active_mean(lev, active)
        step = balancing_step(lev, mean, beta)
        # a matrix whose leverage came out non-finite keeps its D for this step
        step = torch.where(torch.isfinite(step).all(dim=-2, keepdim=True), step, torch.ones_like(step))
        if tolerance > 0:  # balanced matrices keep their D: each matrix gets what it would alone
            spread = _leverage_spread(lev, mean, active)
            done = spread <= tolerance
            if frozen is not None:
                done = done | frozen
            if host_syncs_allowed(done) and bool(done.all()):
                break  # D stays, and the factorization just computed is that of D·X
            frozen = done
            if row_correction and not reduced and previous is not None and host_syncs_allowed(spread):
                # linear convergence: this step is predicted to land within the tolerance, so it is the
                # last one (the row correction removes what a wrong prediction leaves). Only where the
                # loop can stop early, and for the direct polar factor: the reduced one needs the
                # factorization at the final D, which the step that verifies it gives at no extra cost
                frozen = done | (spread * spread <= tolerance * previous)
            previous = spread
            step = torch.where(done.view(-1, 1, 1), torch.ones_like(step), step)
        D = D * step * active
        D = D / D.amax(dim=-2, keepdim=True).clamp_min(TINY)
        factor = None
        if frozen is not None and host_syncs_allowed(frozen) and bool(frozen.all()):
            break
    if reduced:
        Z, L = factor if factor is not None else gram_factor(Xg, D, gram_matmul_dtype)
        del factor, Xg
        U = polar_after_first_pass(Z.mul_(D), L.mT, orthogonalize).to(X.dtype)
    else:
        del Xg
        U = orthogonalize(D.to(X.dtype) * X)
    if row_correction:
        U = corrected_rows(U, active)
    r = D * norms
    r = r / _active_mean(r, active).clamp_min(TINY)
    return U, r.squeeze(-1)


def gram_dtype_for(polar: Any, polar_dtype: torch.dtype | None) -> torch.dtype:
    """float64 Gram matrices for the exact backend or a float64 polar factor; fp32 otherwise."""
    return torch.float64 if polar_dtype == torch.float64 or polar == "svd" else torch.float32


def aurora_direction(
    M: Tensor,
    *,
    orthogonalize: Callable[[Tensor], Tensor],
    balance_steps: int,
    balance_beta: float | None,
    eps: float,
    balance: str = "gram",
    gram_dtype: torch.dtype | None = None,
    gram_matmul_dtype: torch.dtype | None = None,
    scaling: Tensor | None = None,
    tolerance: float = 0.0,
    row_correction: bool = False,
    reduce_polar: bool = False,
    nonfinite_directions: Tensor | None = None,
) -> Tensor:
    """Aurora's update direction for momentum matrices M [B, m, n].

    Square: polar(M) (rows are uniform already). Wide: the tall rule on Mᵀ, transposed back (the
    columns are balanced). ``balance`` picks the Gram (default) or the reference-style balancing;
    ``gram_dtype`` and ``gram_matmul_dtype``: the precision of the Gram steps (:func:`balanced_polar`).
    ``scaling`` [B, max(m, n)], ``"gram"`` only: the warm start r of the balancing, overwritten
    with the new one. ``tolerance`` > 0: stop balancing once every row is within it of uniform.
    ``row_correction``: rescale the rows of the computed U to uniform (:func:`corrected_rows`).
    ``reduce_polar``: the polar factor of D·M from the Gram steps' CholeskyQR (:func:`balanced_polar`).
    A matrix whose U comes out non-finite gets a zero direction instead, and ``nonfinite_directions``
    [B] (if given) counts it.
    """
    if M.size(-2) == M.size(-1):
        return _finite_or_zero(orthogonalize(M), nonfinite_directions)
    X, transposed = tall(M)
    U, r = balanced_polar(
        X,
        orthogonalize=orthogonalize,
        balance=balance,
        steps=balance_steps,
        beta=balance_beta,
        eps=eps,
        gram_dtype=gram_dtype,
        gram_matmul_dtype=gram_matmul_dtype,
        scaling=scaling,
        tolerance=tolerance,
        row_correction=row_correction,
        reduce_polar=reduce_polar,
    )
    if scaling is not None:
        scaling.copy_(torch.where(torch.isfinite(r), r, scaling))
    U = _finite_or_zero(U, nonfinite_directions)
    return U.mT if transposed else U


def _finite_or_zero(U: Tensor, nonfinite_directions: Tensor | None) -> Tensor:
    """U [B, m, n] with each non-finite matrix replaced by zeros; counted in ``nonfinite_directions`` [B]."""
    finite = all_finite(U, (-2, -1))
    if nonfinite_directions is not None:
        nonfinite_directions.add_((~finite).to(nonfinite_directions.dtype))
    if host_syncs_allowed(finite) and bool(finite.all()):
        return U
    return torch.where(finite.view(-1, 1, 1), U, torch.zeros((), dtype=U.dtype, device=U.device))


def _polar_dtype(M: Tensor, group: dict[str, Any]) -> torch.dtype:
    """The dtype the group's polar factor of M runs in (``polar_dtype`` or M's device default)."""
    return group["polar_dtype"] or default_polar_dtype(M.device)


def _low_precision_polar(M: Tensor, group: dict[str, Any]) -> torch.dtype | None:
    """The group's polar dtype for M's device if it is bf16 or fp16, else None."""
    polar_dtype = _polar_dtype(M, group)
    return polar_dtype if polar_dtype in LOW_PRECISION else None


def _sync_free_gram_steps(M: Tensor, group: dict[str, Any]) -> int:
    low_precision = _low_precision_polar(M, group) is not None
    return GRAM_STEPS_SYNC_FREE_LOW_PRECISION if low_precision else GRAM_STEPS_SYNC_FREE


def _gram_matmul_dtype(M: Tensor, group: dict[str, Any]) -> torch.dtype | None:
    """The dtype the Gram steps' products round their inputs to, or None for full precision: the
    group's ``gram_matmul_dtype``, by default (None) a bf16/fp16 polar dtype, unless the Gram
    matrices are float64 (the exact backend)."""
    requested = group["gram_matmul_dtype"]
    if requested is None:
        if gram_dtype_for(group["polar"], group["polar_dtype"]) == torch.float64:
            return None
        return _low_precision_polar(M, group)
    return requested if requested in LOW_PRECISION else None


class Aurora(SpectralOptimizer):
    algorithm = "aurora"
    stacked_state = ("balance_scaling", "nonfinite_directions")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        weight_decay: float = 0.025,
        *,
        balance: str = "gram",
        balance_steps: int | None = None,
        balance_beta: float | None = None,
        balance_tolerance: float | None = None,
        warm_start: bool = True,
        row_correction: bool = True,
        gram_matmul_dtype: torch.dtype | None = None,
        polar_reduction: str | None = "auto",
        **kwargs: Any,
    ) -> None:
        if balance not in BALANCE_MODES:
            raise ValueError(f"invalid balance: {balance!r} (expected one of {BALANCE_MODES})")
        default_steps, default_beta, default_tolerance = MODE_DEFAULTS[balance]
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            polar_reduction=polar_reduction,
            algorithm_defaults={
                "balance": balance,
                "balance_steps": default_steps if balance_steps is None else balance_steps,
                "balance_beta": default_beta if balance_beta is None else balance_beta,
                "balance_tolerance": default_tolerance if balance_tolerance is None else balance_tolerance,
                "warm_start": warm_start,
                "row_correction": row_correction,
                "gram_matmul_dtype": gram_matmul_dtype,
            },
            **kwargs,
        )

    def _validate_algorithm(self, group: dict[str, Any]) -> None:
        if group["balance"] not in BALANCE_MODES:
            raise ValueError(f"invalid balance: {group['balance']!r} (expected one of {BALANCE_MODES})")
        if group["balance_steps"] is not None or group["balance"] != "gram":
            _check_int("balance_steps", group["balance_steps"], 1)
        if group["balance_beta"] is not None:
            _check_float("balance_beta", group["balance_beta"], 0.0, 1.0, low_open=True)
        _check_float("balance_tolerance", group["balance_tolerance"], 0.0)
        if not isinstance(group["warm_start"], bool):
            raise ValueError(f"invalid warm_start: {group['warm_start']!r} (expected a bool)")
        if not isinstance(group["row_correction"], bool):
            raise ValueError(f"invalid row_correction: {group['row_correction']!r} (expected a bool)")
        if group["gram_matmul_dtype"] not in GRAM_MATMUL_DTYPES:
            raise ValueError(
                f"invalid gram_matmul_dtype: {group['gram_matmul_dtype']!r} (expected one of {GRAM_MATMUL_DTYPES})"
            )
        if group["gram_matmul_dtype"] is not None and group["balance"] != "gram":
            raise ValueError(f"invalid gram_matmul_dtype: balance={group['balance']!r} takes no Gram steps")

    def _init_state(self, p, state, group):
        super()._init_state(p, state, group)
        batch, m, n = matrix_shape(p.shape)
        if group["balance"] == "gram" and group["warm_start"] and m != n:
            # r_i = d_i·‖M_i‖ of the last step, over the rows of the tall orientation; 1 = cold start
            state["balance_scaling"] = torch.ones(batch, max(m, n), dtype=p.dtype, device=p.device)
        # per matrix, steps whose direction came out non-finite and gave no update (should stay 0);
        # in the parameter's dtype so that the distributed exchange needs no wider buffer
        state["nonfinite_directions"] = torch.zeros(batch, dtype=p.dtype, device=p.device)

    def _direction(self, M, state, group, orthogonalize):
        steps = group["balance_steps"]
        if steps is None:
            steps = GRAM_STEPS_WITH_EARLY_EXIT if host_syncs_allowed(M) else _sync_free_gram_steps(M, group)
        return aurora_direction(
            M,
            orthogonalize=orthogonalize,
            balance_steps=steps,
            balance_beta=BALANCE_BETA[group["balance"]] if group["balance_beta"] is None else group["balance_beta"],
            eps=group["eps"],
            balance=group["balance"],
            gram_dtype=gram_dtype_for(group["polar"], group["polar_dtype"]),
            gram_matmul_dtype=_gram_matmul_dtype(M, group),
            scaling=state.get("balance_scaling") if group["warm_start"] else None,
            tolerance=group["balance_tolerance"],
            row_correction=group["row_correction"],
            reduce_polar=reduces_polar(group["polar_reduction"], _polar_dtype(M, group), M.shape),
            nonfinite_directions=state.get("nonfinite_directions"),
        )


Aurora.__doc__ = rf"""Aurora: leverage-aware spectral descent (Tilde Research, arXiv 2606.27715).

    For a tall momentum matrix M (m > n) the update is a semi-orthogonal U (UᵀU = I) whose rows all
    have ‖U_i‖² = n/m, so every neuron gets the same share of the update:

    .. math::
        D_0 = \mathrm{{diag}}(r_i/\lVert M_i\rVert),\quad
        D_{{k+1}} = D_k\,\mathrm{{diag}}\big((\bar\ell/\ell_i(D_k M))^{{β}}\big),\quad
        U = \mathrm{{polar}}(D_K M),\quad W \leftarrow (1-ηλ)W - η\,s(m,n)\,U

    with ℓ_i(D M) = d_i² M_iᵀ (Mᵀ D² M)⁻¹ M_i the leverage scores, computed from the n×n Gram
    matrix by a Cholesky factorization (``balance="gram"``, the default: one polar factor per step),
    or read off U_k = polar(D_k M) (``balance="polar"``, the reference: K polar factors).

    Differences from :class:`Muon`:

    - tall matrices: row-uniform leverage (no starved rows); square: identical to Muon;
      wide: the rule applied to Mᵀ (columns balanced);
    - rows of M that are exactly zero are left out of the balancing and get zero update;
    - ``"gram"`` costs one polar factor plus 1 to ``balance_steps`` Gram/Cholesky steps (~3mn²
      flops each; eager on the CPU it stops once rows are within ``balance_tolerance``, elsewhere it
      runs all of them, to need no host synchronization); with ``warm_start`` it keeps r = D·‖M_i‖ from the last step
      (``state["balance_scaling"]``, one number per row of the tall orientation, in the parameter's
      dtype) and starts there;
    - ``polar_reduction`` defaults to ``"auto"``: with ``"gram"``, a matrix at least twice as tall as
      wide whose short side is at least 160 gets polar(D·M) = Q·polar(R) from CholeskyQR2 of D·M,
      whose first pass is the Gram step that found the rows balanced (:func:`balanced_polar`), so the
      polar iteration runs on n×n matrices (GPT step of the CPU bench: 1.08× Muon's, 1.24× computed
      directly); in bf16/fp16 (the CUDA default) the polar factor is computed directly.

    For hidden weight matrices; embeddings, the output head and 1-D parameters belong in an
    ``"adamw"`` group (see :func:`aurora_opt.param_groups`).

    Args:{spectral_kwargs_doc(0.02, 0.025, "auto")}
        balance (str): ``"gram"`` (default) or ``"polar"`` (the reference's K polar factors).
        balance_steps (int or None): ``"gram"``: at most this many Gram balancing steps (default
            ``None``: up to 8, stopping at ``balance_tolerance``, eager on the CPU; exactly 3 on CUDA
            and under ``torch.compile``, where stopping early would need a host synchronization, 2
            there with a bf16/fp16 polar factor, whose own error dominates);
            ``"polar"``: K, the number of polar factors computed (default 2). Fewer Gram steps
            cost less and leave more to the row correction (factors within 1.5), which makes the
            rows uniform but not the direction Aurora's: one step per optimizer step put it 20×
            further from exact Aurora on the bench's drifting momenta (README, "Fast Aurora").
        balance_beta (float or None): β, the exponent of the balancing step, in (0, 1]; ``None``
            (the default for ``"gram"``) takes the diagonal Newton step β = 0.5/(1 − ℓ̄), ℓ̄ = n/m
            for a full-rank tall matrix, capped near 1; 0.5 for ``"polar"``.
        balance_tolerance (float or None): stop balancing once max_i |ℓ_i/ℓ̄ − 1| is at most this
            (default 1e-3 for ``"gram"``; 0, i.e. always K steps, for ``"polar"``, as the reference).
        warm_start (bool): ``"gram"`` only: start the balancing from the last step's scaling
            (default: True).
        row_correction (bool): rescale the rows of the computed polar factor to exactly uniform
            leverage (in fp32), correcting what an unconverged or bf16 polar factor leaves
            (default: True; ``False`` returns polar(D·M) as computed, as the reference does).
        gram_matmul_dtype (torch.dtype or None): ``"gram"`` only: the dtype the Gram steps' two
            m×n by n×n products round their inputs to, accumulating in fp32 (tensor cores on a GPU);
            the factorization stays in fp32. ``None`` (default): bf16/fp16 when the polar factor is
            (so bf16 on CUDA), whose own error is far larger, but full precision with the ``"svd"``
            backend; ``torch.float32``: full precision.
"""
