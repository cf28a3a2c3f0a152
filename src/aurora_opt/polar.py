"""Polar-factor backends.

For a matrix ``G`` with thin SVD ``G = U Σ Vᵀ`` the polar factor is ``polar(G) = U Vᵀ``: the
semi-orthogonal matrix nearest to ``G`` in the Frobenius norm. Directions in which ``G`` has a zero
singular value are mapped to zero (the partial isometry), as every matmul iteration below does.

Every backend has one signature::

    fn(G: Tensor, *, steps: int | None = None, eps: float = 1e-7) -> Tensor

``G`` is ``[..., m, n]`` (leading dimensions are a batch), the result has the shape and dtype of
``G`` and is computed in ``G.dtype`` (cast ``G`` first to choose the precision). ``steps=None``
takes the backend's default. Pick a backend by name with :func:`get_polar`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .matrices import TINY, gram, tall
from .sync import host_syncs_allowed

__all__ = [
    "POLAR_BACKENDS",
    "POLAR_REDUCTIONS",
    "PolarFn",
    "cholesky_qr",
    "cholesky_qr_first_pass",
    "get_polar",
    "newton_schulz",
    "polar_express",
    "polar_express_coefficients",
    "polar_after_first_pass",
    "reduces_polar",
    "reducible",
    "scaled_to_unit_max",
    "shifted_cholesky",
    "simple_quintic",
    "svd_polar",
]


class PolarFn(Protocol):
    def __call__(self, G: Tensor, *, steps: int | None = None, eps: float = 1e-7) -> Tensor: ...


# Keller Jordan's quintic (github.com/KellerJordan/Muon, also torch.optim.Muon's defaults). Tuned for
# speed rather than accuracy: after 5 steps singular values land roughly in (0.5, 1.5), not at 1.
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5

# p(σ) = 2σ − 1.5σ³ + 0.5σ⁵: the fixed quintic of modded-nanoGPT's track-3 `train_gpt_simple.py` and
# the Aurora reference release, run for 12 steps (enough to lift σ = 2⁻¹² to 1).
SIMPLE_QUINTIC_COEFFICIENTS = (2.0, -1.5, 0.5)
SIMPLE_QUINTIC_STEPS = 12

# Polar Express (Amsel et al., arXiv 2505.16932): a different minimax-optimal odd quintic per step for
# singular values in [POLAR_EXPRESS_LOWER, 1]. 7 steps take that interval to within 1e-9 of 1 in exact
# arithmetic (6 steps leave 1e-3), so 7 is the default; the matmul precision is then the only limit
# (measured on 512×128 matrices with σ spread over two decades: 6e-6 relative error in fp32, 5e-2 in
# bf16, against the float64 SVD; the 12-step simple quintic reaches 5e-7 and 6e-3).
POLAR_EXPRESS_LOWER = 1e-3
POLAR_EXPRESS_STEPS = 7
# Once the interval is this narrow the minimax quintic is the Taylor quintic (15σ − 10σ³ + 3σ⁵)/8
# (p(1) = 1, p'(1) = p''(1) = 0); the Remez system is ill-conditioned there, so that is used directly.
TAYLOR_QUINTIC_COEFFICIENTS = (15 / 8, -10 / 8, 3 / 8)
POLAR_EXPRESS_TAYLOR_WIDTH = 1e-6
# Every step but the last is evaluated at σ/1.01, so rounding that pushes σ slightly past the interval
# (bf16 has 8 bits of mantissa) does not overshoot; the last step restores the scale.
POLAR_EXPRESS_SAFETY = 1.01


def scaled_to_unit_max(G: Tensor) -> Tensor:
    """Divide each matrix by the power of two 2^e with 2^e ≤ max|G| < 2^(e+1): max|entry| lands in [1, 2).

    Exact (it only shifts exponents) and leaves every scale-invariant map (the polar factor) unchanged;
    afterwards Frobenius and row norms neither overflow (entries near 1e30 square to inf in fp32) nor
    underflow (entries near 1e-30 square to 0). All-zero matrices stay zero.
    """
    if G.numel() == 0:
        return G
    amax = G.abs().amax(dim=(-2, -1), keepdim=True)
    exponent = torch.frexp(amax.float()).exponent - 1
    return G / torch.exp2(exponent.to(G.dtype))


def _normalized(G: Tensor, eps: float) -> Tensor:
    """Scale each matrix to Frobenius norm ≤ 1, which bounds its spectral norm by 1."""
    G = scaled_to_unit_max(G)
    return G / (torch.linalg.matrix_norm(G, keepdim=True) + eps)


def _odd_quintic_iteration(G: Tensor, coefficients: list[tuple[float, float, float]], eps: float) -> Tensor:
    """Apply X ← aX + (bA + cA²)X with A = X Xᵀ (or, for tall X, X ← aX + X(bA + cA²) with A = XᵀX:
    the smaller Gram matrix either way), one coefficient triple per step.

    Both sums are fused into their products (``baddbmm``: the product accumulated in fp32 and the sum
    rounded once). In bf16, rounding aX and BX apart and then their sum lost what their cancellation
    leaves (aX + BX is much smaller than either where a step maps σ well below a·σ): Polar Express's
    error on 512×128 matrices with σ over two decades was 5.1e-2 instead of 3.0e-2, 9.5e-2 instead of
    1.8e-2 at 64×16 with σ over one decade (benchmarks/cpu/polar_accuracy.md, before and after), and
    a 14×1 vector came out 8 % off instead of 0.6 % (its direction quantized). The iteration runs on
    a contiguous copy in G's own orientation, so the result is contiguous: reductions over a
    transposed view would round differently from those over a gathered copy (the distributed step).
    """
    is_tall = G.size(-2) > G.size(-1)
    shape = G.shape
    X = _normalized(G, eps).contiguous()
    X = X.flatten(0, -3) if X.dim() > 2 else X.unsqueeze(0)
    for a, b, c in coefficients:
        A = X.mT @ X if is_tall else X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, X, B, beta=a) if is_tall else torch.baddbmm(X, B, X, beta=a)
    return X.reshape(shape)


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"polar iteration steps must be a positive integer, got {steps!r}")
    return steps


def newton_schulz(G: Tensor, *, steps: int | None = None, eps: float = 1e-7) -> Tensor:
    """Keller Jordan's 5-step quintic Newton–Schulz (approximate: σ → roughly (0.5, 1.5))."""
    steps = _check_steps(NEWTON_SCHULZ_STEPS if steps is None else steps)
    return _odd_quintic_iteration(G, [NEWTON_SCHULZ_COEFFICIENTS] * steps, eps)


def simple_quintic(G: Tensor, *, steps: int | None = None, eps: float = 1e-7) -> Tensor:
    """The fixed quintic p(σ) = 2σ − 1.5σ³ + 0.5σ⁵, 12 steps by default (the reference's choice)."""
    steps = _check_steps(SIMPLE_QUINTIC_STEPS if steps is None else steps)
    return _odd_quintic_iteration(G, [SIMPLE_QUINTIC_COEFFICIENTS] * steps, eps)


def _minimax_odd_quintic(lower: float, upper: float) -> tuple[float, float, float, float]:
    """Remez exchange for p(x) = ax + bx³ + cx⁵ minimizing max |1 − p(x)| on [lower, upper].

    The optimal error equioscillates at four points: both ends and the two interior extrema of p,
    which are the positive roots of p'(x) = a + 3bx² + 5cx⁴. Returns (a, b, c, E), E the minimax error.
    """
    xs = [lower + (upper - lower) * k / 3 for k in range(4)]
    for _ in range(100):
        A = torch.tensor([[x, x**3, x**5, (-1.0) ** k] for k, x in enumerate(xs)], dtype=torch.float64)
        a, b, c, E = torch.linalg.solve(A, torch.ones(4, dtype=torch.float64)).tolist()
        discriminant = 9 * b * b - 20 * a * c
        if c == 0 or discriminant < 0:
            break
        ys = sorted(((-3 * b - math.sqrt(discriminant)) / (10 * c), (-3 * b + math.sqrt(discriminant)) / (10 * c)))
        interior = [math.sqrt(y) for y in ys if lower**2 < y < upper**2]
        if len(interior) != 2:
            break
        new_xs = [lower, interior[0], interior[1], upper]
        converged = max(abs(p - q) for p, q in zip(new_xs, xs)) < 1e-15
        xs = new_xs
        if converged:
            break
    return a, b, c, abs(E)


def _minimax_sequence(lower: float, count: int) -> tuple[tuple[float, float, float], ...]:
    """The greedy Polar Express sequence of ``count`` quintics, without the safety factor.

    Step t takes the minimax quintic on the current interval [l, u] (u = 1 at first); its image is
    [1 − E, 1 + E], the next interval. Once the interval is narrower than
    ``POLAR_EXPRESS_TAYLOR_WIDTH`` the remaining steps use the Taylor quintic, its limit.
    """
    lo, hi = lower, 1.0
    sequence: list[tuple[float, float, float]] = []
    for _ in range(count):
        if hi - lo > POLAR_EXPRESS_TAYLOR_WIDTH:
            a, b, c, E = _minimax_odd_quintic(lo, hi)
            lo, hi = 1.0 - E, 1.0 + E
        else:
            a, b, c = TAYLOR_QUINTIC_COEFFICIENTS
        sequence.append((a, b, c))
    return tuple(sequence)


#: The default sequence, computed once at import (a few ms): the step runs only plain arithmetic on
#: it, so a compiled step neither recomputes it nor breaks its graph. Past its length every
#: quintic is the Taylor quintic (the interval has converged after 8 steps).
_DEFAULT_SEQUENCE = _minimax_sequence(POLAR_EXPRESS_LOWER, 16)


def polar_express_coefficients(
    steps: int, lower: float = POLAR_EXPRESS_LOWER, safety: float = POLAR_EXPRESS_SAFETY
) -> tuple[tuple[float, float, float], ...]:
    """The greedy Polar Express schedule of ``steps`` quintics, computed (not tabulated) from the
    paper's construction: the minimax sequence, every step but the last evaluated at σ/``safety``."""
    if lower == POLAR_EXPRESS_LOWER and steps <= len(_DEFAULT_SEQUENCE):
        sequence = _DEFAULT_SEQUENCE[:steps]
    elif lower == POLAR_EXPRESS_LOWER:
        sequence = _DEFAULT_SEQUENCE + (TAYLOR_QUINTIC_COEFFICIENTS,) * (steps - len(_DEFAULT_SEQUENCE))
    else:
        sequence = _minimax_sequence(lower, steps)
    schedule = []
    for t, (a, b, c) in enumerate(sequence):
        s = safety if t < steps - 1 else 1.0
        schedule.append((a / s, b / s**3, c / s**5))
    return tuple(schedule)


def polar_express(G: Tensor, *, steps: int | None = None, eps: float = 1e-7) -> Tensor:
    """Polar Express: per-step minimax quintics; 7 steps reach σ ≈ 1 for σ/‖G‖_F ≥ 1e-3."""
    steps = _check_steps(POLAR_EXPRESS_STEPS if steps is None else steps)
    return _odd_quintic_iteration(G, list(polar_express_coefficients(steps)), eps)


def svd_polar(G: Tensor, *, steps: int | None = None, eps: float = 1e-7) -> Tensor:
    """Exact polar factor from a float64 SVD (for tests and small matrices; ``steps`` is unused).

    Singular values at or below the noise floor are treated as zero and their directions dropped:
    max(m, n)·ε₆₄·σ_max, the float64 SVD's own error (``torch.linalg.matrix_rank``'s convention), plus
    ε·‖G‖_F + (√m + √n)·s, ε the machine epsilon and s the smallest subnormal of ``G.dtype``: rounding
    to that dtype moves each entry by at most ε/2 of itself or s/2. (Scaling the SVD term by the
    input's ε instead would exceed σ_max once max(m, n) ≥ 1/ε, 128 in bf16, dropping real directions.)
    """
    U, S, Vh = torch.linalg.svd(G.to(torch.float64), full_matrices=False)
    m, n = G.shape[-2:]
    info = torch.finfo(G.dtype)
    svd_error = max(m, n) * torch.finfo(torch.float64).eps * S[..., :1]
    rounding = (
        info.eps * S.square().sum(dim=-1, keepdim=True).sqrt() + (math.sqrt(m) + math.sqrt(n)) * info.tiny * info.eps
    )
    tolerance = svd_error + rounding
    keep = (S > tolerance).to(torch.float64).unsqueeze(-2)
    return ((U * keep) @ Vh).to(G.dtype)


POLAR_BACKENDS: dict[str, PolarFn] = {
    "polar_express": polar_express,
    "newton_schulz": newton_schulz,
    "simple_quintic": simple_quintic,
    "svd": svd_polar,
}

DEFAULT_POLAR = "polar_express"


def get_polar(name: str | Callable[..., Tensor]) -> PolarFn:
    """Return the backend called ``name`` (a callable with the backend signature passes through)."""
    if callable(name):
        return name  # type: ignore[return-value]
    try:
        return POLAR_BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown polar backend {name!r}; choose one of {sorted(POLAR_BACKENDS)}") from None


#: Ridge λ = GRAM_RIDGE·tr(C) added to a Gram matrix C = XᵀX before its Cholesky factorization, so
#: directions with σ² below λ count (partly) as absent. In fp32 the Gram matrix cannot resolve
#: σ²/‖X‖_F² much below 1e-7 anyway, and Polar Express / the 12-step quintic lift only σ/‖X‖_F ≳ 3e-4
#: to 1 (σ/‖X‖_F = 2e-4 comes out at about 0.6), so the ridge matches what the polar factor resolves.
#: In float64 (exact SVD backend) it is near that dtype's resolution instead: exact for condition
#: numbers up to ~1e5; beyond, directions with σ² ≲ λ count partly.
GRAM_RIDGE = {torch.float32: 1e-7, torch.float64: 1e-15}
#: a failed Cholesky factorization (rank-deficient X, rounding) is retried with the ridge ×100 until
#: it succeeds; at ridge ≥ 1 the shifted Gram matrix is always positive definite. Without host
#: synchronization (CUDA, compiled) a failure is retried once per entry of ``retry_ridges``, masked
#: (by default once, directly at ridge 1).
RIDGE_GROWTH = 100.0
#: the sync-free retries of CholeskyQR's second pass, relative to tr(Q₁ᵀQ₁) ≈ n: 1e-4 of Q₁'s mean
#: eigenvalue first (Q₁ of a rank-deficient X has near-zero columns; resolved directions keep their
#: length to 5e-5), ridge 1 only if that fails too (which leaves Q at about 1/√(1 + n) of orthonormal)
SECOND_PASS_RETRY = 1e-4


def gram_ridge(dtype: torch.dtype) -> float:
    """``GRAM_RIDGE`` of ``dtype`` (fp32's for the others)."""
    return GRAM_RIDGE.get(dtype, GRAM_RIDGE[torch.float32])


def shifted_cholesky(C: Tensor, ridge: float | None = None, retry_ridges: tuple[float, ...] = (1.0,)) -> Tensor:
    """Lower-triangular L [..., n, n] with L Lᵀ = C + λI, λ = ridge·tr(C) per matrix.

    ``C`` [..., n, n] is a symmetric positive semidefinite Gram matrix; its diagonal is shifted in
    place. ``ridge=None`` is :func:`gram_ridge` of C's dtype. A factorization that fails is retried
    with a larger ridge: ×``RIDGE_GROWTH`` until it succeeds where host syncs are allowed, else once
    at each of ``retry_ridges`` (increasing, the last ≥ 1 so that it always succeeds), masked.
    """
    if ridge is None:
        ridge = gram_ridge(C.dtype)
    if not ridge > 0:  # the eager retries multiply it: from 0 they would never end
        raise ValueError(f"invalid ridge: {ridge!r} (expected > 0)")
    diagonal = C.diagonal(dim1=-2, dim2=-1)
    trace = diagonal.sum(dim=-1, keepdim=True).clamp_min(TINY)  # [..., 1]
    diagonal.add_(ridge * trace)
    L, info = torch.linalg.cholesky_ex(C)
    failed = (info > 0).unsqueeze(-1)  # [..., 1]

    def retry(new_ridge: float) -> None:  # the failed matrices only
        nonlocal L, failed, ridge
        diagonal.add_(failed * (new_ridge - ridge) * trace)
        ridge = new_ridge
        factor, retry_info = torch.linalg.cholesky_ex(C)
        L = torch.where(failed.unsqueeze(-1), factor, L)
        failed = failed & (retry_info > 0).unsqueeze(-1)

    if host_syncs_allowed(info):
        while ridge < 1.0 and bool(failed.any()):
            retry(ridge * RIDGE_GROWTH)
    else:  # masked, a fixed count: no data-dependent branch
        for new_ridge in retry_ridges:
            retry(new_ridge)
    return L


def solve_factor_right(X: Tensor, L: Tensor) -> Tensor:
    """X L⁻ᵀ for X [..., m, n] and a lower-triangular L [..., n, n], as (L⁻¹ Xᵀ)ᵀ: row-major like X.

    Solving from the left on Xᵀ hands LAPACK X's rows as the columns it works on, without a copy,
    and its column-major result is row-major once transposed back; solving X L⁻ᵀ from the right
    returned a column-major result, whose row reductions were strided (8×1024×256, one CPU thread:
    4.8 ms against 6.4 ms for the solve, 0.4 ms against 3.0 ms for the row norms of its result).
    """
    return torch.linalg.solve_triangular(L, X.mT, upper=False).mT


def cholesky_qr_first_pass(X: Tensor) -> tuple[Tensor, Tensor]:
    """Q₁ = X R₁⁻¹ and R₁ = chol(XᵀX + λI)ᵀ (λ = ``GRAM_RIDGE``·‖X‖_F²) for X [..., m, n], m ≥ n.

    Q₁ᵀQ₁ − I is λ/σ_min² plus rounding ε·κ(X)² (measured 1e-3 to 1e-2 in fp32 at κ = 100), which
    the second pass (:func:`cholesky_qr`, :func:`polar_after_first_pass`) removes.
    """
    L = shifted_cholesky(gram(X))
    return solve_factor_right(X, L), L.mT


def _second_pass_factor(Q1: Tensor) -> Tensor:
    """L₂ with L₂L₂ᵀ = Q₁ᵀQ₁ + λ₂I, the ridge relative to Q₁'s mean eigenvalue (≈ 1), not its trace (≈ n).

    Q = Q₁L₂⁻ᵀ is then orthonormal to rounding (2e-6 in fp32 at κ = 100), and X = Q·(L₂ᵀR₁) holds
    either way, so the second pass also undoes the first ridge's shrinking of Q₁'s weak directions: Q
    stays orthonormal down to σ/‖X‖_F ≈ 1e-5 (the effective shift is about GRAM_RIDGE²·‖X‖_F²).
    """
    n = Q1.size(-1)
    return shifted_cholesky(gram(Q1), gram_ridge(Q1.dtype) / n, retry_ridges=(SECOND_PASS_RETRY / n, 1.0))


def cholesky_qr(X: Tensor) -> tuple[Tensor, Tensor]:
    """X [..., m, n] (m ≥ n) = Q R with QᵀQ ≈ I and R [..., n, n] upper triangular: shifted CholeskyQR2
    (:func:`cholesky_qr_first_pass`, then the same on Q₁: Q = Q₁R₂⁻¹, R = R₂R₁). X is released after
    the first pass: a temporary passed in (a rescaled copy) is freed before Q is formed.
    """
    Q1, R1 = cholesky_qr_first_pass(X)
    del X
    L2 = _second_pass_factor(Q1)
    return solve_factor_right(Q1, L2), L2.mT @ R1


def polar_after_first_pass(Q1: Tensor, R1: Tensor, polar: Callable[[Tensor], Tensor]) -> Tensor:
    """polar(X) = Q·polar(R) for X = Q₁R₁ [B, m, n] after CholeskyQR's first pass, Q = Q₁R₂⁻¹ and
    R = R₂R₁ from its second, in Q₁'s dtype.

    Formed as Q₁·(R₂⁻¹·polar(R)): an n×n triangular solve instead of the m×n one that forms Q (8×1024×256
    in fp32, one CPU thread: 56 ms against 60 ms for the second pass and the polar factor; the results
    agreed to 4e-7). ``polar`` runs on Rᵀ, using polar(R) = polar(Rᵀ)ᵀ: there the iteration's Gram
    matrix is RᵀR = XᵀX, the one the direct polar factor of X forms, and its iterates are the direct
    ones times Qᵀ. On R it forms RRᵀ instead, which in bf16 flipped the sign of a weak direction (an
    error of 2/√n) more often: on 1920 drifting gradients of 48×16 to 32×96, errors above 0.25 for 32
    on R, 6 on Rᵀ and 3 directly before the iteration's sums were fused, 1, 0 and 0 since (Polar
    Express, benchmarks/cpu/polar_accuracy.md).
    """
    L2 = _second_pass_factor(Q1)
    P = polar((L2.mT @ R1).mT).mT.to(Q1.dtype)
    factor = torch.linalg.solve_triangular(L2.mT, P, upper=True)
    del L2, P  # not alive beside the m×n product
    return Q1 @ factor


#: how a polar factor may be reduced before the backend runs: ``None`` (it runs on the matrix) or
#: ``"qr"``: X = QR (:func:`cholesky_qr`), polar(X) = Q·polar(R), the backend on the n×n triangle.
#: Every backend is an odd matrix function, p(X) = X·q(XᵀX), and XᵀX = RᵀR, so Q·p(R) = X R⁻¹·R·q(RᵀR)
#: = p(X): the same direction for 3n³ instead of (2m + n)·n² flops per quintic step. A custom
#: backend (a callable ``polar``) must be such an odd matrix function too, f(Q·X) = Q·f(X).
#: ``"auto"``: ``"qr"`` where the polar factor runs in fp32 or float64 (measured on the CPU) and the
#: short side is at least AUTO_REDUCTION_MIN_SIDE, direct otherwise and in bf16/fp16 (the CUDA default,
#: whose cost with the reduction is yet to be measured on a GPU).
POLAR_REDUCTIONS = (None, "qr", "auto")
#: below this short side the reduction's extra small operations cost more than its flops save:
#: Aurora's step (CPU, fp32, one thread, Polar Express, the bench's drifting gradients) took 1.14× the
#: direct one's time at 448×112, 1.00–1.05× at 512×128, 0.91× at 640×160, 0.82× at 768×192 and 0.79×
#: at 1024×256
AUTO_REDUCTION_MIN_SIDE = 160
#: "qr" reduces matrices at least this many times taller than wide. Measured (CPU, fp32, one
#: thread, Polar Express; benchmarks/cpu/polar_reduction.md, f96ae62): the reduced polar factor took
#: 1.33× the direct one's time at 320×256, 1.21× at 384×256, 1.07× at 448×256, 1.00× at 512×256, 0.84×
#: at 768×256, 0.72× at 1024×256; 0.96× at 1024×512 and 0.73× at 2048×512 (before the direct
#: iteration's sums were fused into its products, 0.86× at 512×256 and 0.57× at 1024×256).
QR_REDUCTION_MIN_ASPECT = 2


def reducible(shape: torch.Size) -> bool:
    """Whether matrices of ``shape`` [..., m, n] are at least QR_REDUCTION_MIN_ASPECT times taller than
    wide or wider than tall (and not empty): the ones the reduction applies to."""
    short, long = sorted(shape[-2:])
    return short > 0 and long >= QR_REDUCTION_MIN_ASPECT * short


def check_reduction(reduction: object) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``POLAR_REDUCTIONS``."""
    if reduction not in POLAR_REDUCTIONS:
        raise ValueError(f"invalid polar_reduction: {reduction!r} (expected one of {POLAR_REDUCTIONS})")


def qr_reduced(X: Tensor, polar: Callable[[Tensor], Tensor]) -> Tensor:
    """polar(X) as Q·polar(R) for X [B, m, n] with m ≥ QR_REDUCTION_MIN_ASPECT·n (either orientation).

    The factorization and the product run in fp32 (float64 for float64 ``X``), ``polar`` on R in
    whatever precision it chooses; other shapes go to ``polar`` directly.
    """
    if not reducible(X.shape):
        return polar(X)
    Y, transposed = tall(X)
    # an exact power-of-two rescale keeps the Gram matrix finite (polar(X) ignores X's scale); the
    # rescaled copy is the first pass's alone, so it is freed once Q₁ is formed
    Q1, R1 = cholesky_qr_first_pass(scaled_to_unit_max(Y.to(torch.promote_types(Y.dtype, torch.float32))))
    U = polar_after_first_pass(Q1, R1, polar).to(X.dtype)
    return U.mT if transposed else U


def default_polar_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (tensor cores); fp32 elsewhere (bf16 matmuls are ~17× slower on CPU)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def reduces_polar(reduction: str | None, dtype: torch.dtype, shape: torch.Size) -> bool:
    """Whether ``reduction`` (one of ``POLAR_REDUCTIONS``) reduces the polar factor of matrices of
    ``shape`` [..., m, n] computed in ``dtype`` (:func:`qr_reduced` then also checks :func:`reducible`)."""
    if reduction == "auto":
        return dtype in (torch.float32, torch.float64) and min(shape[-2:]) >= AUTO_REDUCTION_MIN_SIDE
    return reduction == "qr"


def make_orthogonalizer(
    name: str | PolarFn,
    *,
    steps: int | None,
    eps: float,
    dtype: torch.dtype | None,
    reduction: str | None = None,
) -> Callable[[Tensor], Tensor]:
    """Bind a backend, its step count, compute dtype and reduction into ``X ↦ polar(X)`` (result in
    X.dtype).

    ``dtype=None`` picks :func:`default_polar_dtype` for the device of each input; ``reduction`` is
    one of ``POLAR_REDUCTIONS`` (:func:`qr_reduced` where :func:`reduces_polar`).
    """
    polar = get_polar(name)
    check_reduction(reduction)

    def direct(X: Tensor) -> Tensor:
        compute_dtype = dtype or default_polar_dtype(X.device)
        return polar(X.to(compute_dtype), steps=steps, eps=eps).to(X.dtype)

    def orthogonalize(X: Tensor) -> Tensor:
        if reduces_polar(reduction, dtype or default_polar_dtype(X.device), X.shape):
            return qr_reduced(X, direct)
        return direct(X)

    return direct if reduction is None else orthogonalize
