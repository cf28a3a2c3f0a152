"""Slow, readable float64 references of every update rule, one parameter at a time, and the
inputs the tests share.

The references follow the formulas in the docstrings literally (Python loops over rows, an exact
SVD polar factor) and share no code with the library beyond torch itself, so agreement is evidence
that the vectorized implementation computes the documented math.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor


def exact_polar(G: Tensor, rank_eps: float | None = None) -> Tensor:
    """U Vᵀ of a 2-D float64 matrix, dropping directions with σ ≤ max(m, n)·rank_eps·σ_max.

    ``rank_eps`` defaults to float64's epsilon; pass the epsilon of the dtype a matrix was made in
    when its zero singular values carry that dtype's rounding.
    """
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    rank_eps = torch.finfo(G.dtype).eps if rank_eps is None else rank_eps
    rank = int((S > max(G.shape) * rank_eps * S[0]).sum()) if S.numel() else 0
    return U[:, :rank] @ Vh[:rank, :]


def relative_error(U: Tensor, ref: Tensor) -> float:
    """‖U − ref‖_F / ‖ref‖_F, in float64."""
    return ((U.to(torch.float64) - ref.to(torch.float64)).norm() / ref.to(torch.float64).norm()).item()


def shape_scale(m: int, n: int, adjust_lr_fn: str | None) -> float:
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, m / n))
    return 0.2 * math.sqrt(max(m, n))


def nesterov_momentum(grad: Tensor, buf: Tensor, momentum: float, nesterov: bool) -> tuple[Tensor, Tensor]:
    """b ← μb + (1−μ)g; M = g + μ(b − g) with Nesterov, else M = b. Returns (new b, M)."""
    buf = momentum * buf + (1 - momentum) * grad
    M = grad + momentum * (buf - grad) if nesterov else buf
    return buf, M


def muon_direction(M: Tensor) -> Tensor:
    return exact_polar(M)


def normuon_direction(M: Tensor, variance: Tensor, beta2: float, eps: float) -> tuple[Tensor, Tensor]:
    O = exact_polar(M)
    m, n = O.shape
    variance = variance.clone()
    O_hat = torch.empty_like(O)
    for i in range(m):
        variance[i] = beta2 * variance[i] + (1 - beta2) * sum(O[i, j] ** 2 for j in range(n)) / n
        O_hat[i] = O[i] / (math.sqrt(variance[i]) + eps)
    return O_hat * (O.norm() / (O_hat.norm() + eps)), variance


def unormuon_direction(M: Tensor, eps: float) -> Tensor:
    U = exact_polar(M)
    m, n = U.shape
    target = math.sqrt(min(m, n) / m)
    for i in range(m):
        norm = U[i].norm()
        U[i] = U[i] * (target / norm) if norm > eps else 0.0
    return U


def aurora_direction(M: Tensor, balance_steps: int, beta: float, eps: float, row_correction: bool = False) -> Tensor:
    """D₀ = 1/‖M_i‖; U_k = polar(D_k M); D_{k+1,i} = D_{k,i}(ℓ̄/ℓ_i)^β over the nonzero rows.

    ``row_correction``: finally U_i ← U_i·sqrt(ℓ̄/ℓ_i) over the nonzero rows, the factor clamped to
    [1/1.5, 1.5].
    """
    m, n = M.shape
    if m == n:
        return exact_polar(M)
    if m < n:
        return aurora_direction(M.T, balance_steps, beta, eps, row_correction).T
    norms = [M[i].norm().item() for i in range(m)]
    largest = max(norms)
    active = [norm > eps * largest for norm in norms]
    d = [1.0 / norm if ok else 0.0 for norm, ok in zip(norms, active)]
    for k in range(balance_steps):
        U = exact_polar(torch.diag(torch.tensor(d, dtype=M.dtype)) @ M)
        if k == balance_steps - 1:
            break
        lev = [U[i].dot(U[i]).item() for i in range(m)]
        mean = sum(l for l, ok in zip(lev, active) if ok) / sum(active)
        d = [di * (mean / li) ** beta if ok else 0.0 for di, li, ok in zip(d, lev, active)]
    if row_correction:
        lev = [U[i].dot(U[i]).item() for i in range(m)]
        mean = sum(l for l, ok in zip(lev, active) if ok) / sum(active)
        for i in range(m):
            U[i] = U[i] * min(max((mean / lev[i]) ** 0.5, 1 / 1.5), 1.5) if active[i] else 0.0
    return U


def adamw(param: Tensor, grad: Tensor, state: dict, lr: float, betas, eps: float, weight_decay: float) -> Tensor:
    beta1, beta2 = betas
    state["t"] = state.get("t", 0) + 1
    state["m"] = beta1 * state.get("m", torch.zeros_like(param)) + (1 - beta1) * grad
    state["v"] = beta2 * state.get("v", torch.zeros_like(param)) + (1 - beta2) * grad * grad
    m_hat = state["m"] / (1 - beta1 ** state["t"])
    v_hat = state["v"] / (1 - beta2 ** state["t"])
    return param * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)


def reference_step(name: str, W: Tensor, G: Tensor, state: dict, **hp) -> Tensor:
    """One step of optimizer ``name`` on a 2-D float64 parameter; ``state`` is updated in place."""
    m, n = W.shape
    buf, M = nesterov_momentum(G, state.get("buf", torch.zeros_like(W)), hp["momentum"], hp["nesterov"])
    state["buf"] = buf
    if name == "muon":
        U = muon_direction(M)
    elif name == "normuon":
        U, state["variance"] = normuon_direction(
            M, state.get("variance", torch.zeros(m, dtype=W.dtype)), hp["beta2"], hp["eps"]
        )
    elif name == "unormuon":
        U = unormuon_direction(M, hp["eps"])
    elif name == "aurora":
        U = aurora_direction(M, hp["balance_steps"], hp["balance_beta"], hp["eps"], hp.get("row_correction", False))
    else:
        raise KeyError(name)
    lr = hp["lr"]
    return W * (1 - lr * hp["weight_decay"]) - lr * shape_scale(m, n, hp.get("adjust_lr_fn")) * U


# ---------------------------------------------------------------------------------------------- shared inputs
def unequal_rows(
    m: int,
    n: int,
    generator: torch.Generator | int = 0,
    *,
    decades: float = 3.0,
    shuffle: bool = False,
    dtype=torch.float64,
) -> Tensor:
    """Gaussian m×n matrix whose row norms are log-spaced over ``decades`` decades around 1, in
    increasing order (or permuted, with ``shuffle``): neurons with unequal gradients, the case where
    Aurora differs from Muon. ``generator``: a seed or a generator to draw from; drawn in float64.
    """
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    scales = torch.logspace(-decades / 2, decades / 2, m, dtype=torch.float64)
    if shuffle:
        scales = scales[torch.randperm(m, generator=generator)]
    return (torch.randn(m, n, generator=generator, dtype=torch.float64) * scales[:, None]).to(dtype)


def set_grads(params: Iterable[Tensor], seed: int) -> None:
    """Give every parameter a fresh standard Gaussian gradient in its own dtype, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)


#: a first Cholesky ridge (relative to the trace) far below fp32 rounding, for tests of the retry:
#: at polar.GRAM_RIDGE itself (1e-7, about the rounding) the first factorization of an exactly rank-1
#: fp32 Gram matrix failed for 9–10 of 20 seeds with AVX-512 kernels and 0–3 of 20 with AVX2 ones,
#: at this ridge for 20 of 20 with either (64 to 4096 rows)
FAILING_RIDGE = 1e-12


#: max_i |ℓ_i/ℓ̄ − 1| of Riemannian Aurora's direction with an accurate polar factor (fp32 or
#: float64): it retracts to rows within aurora.BALANCE_TOLERANCE = 1e-3 at every accepted step; 2e-3 leaves
#: room for the fp32 polar factor's error on top and for balancings that end at balance_steps
#: (measured ≤ 9.5e-4 on Gaussian and dominant-row momenta, 64×16 to 256×64, every accurate backend)
RIEMANNIAN_ROW_TOLERANCE = 2e-3
