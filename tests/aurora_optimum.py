"""An independent float64 optimum of Aurora's problem, for tests of Riemannian Aurora.

    maximize ⟨M, U⟩ over tall U (m ≥ n) with UᵀU = I_n and ‖U_i‖² = n/m for every row i.

Shares no code with the library: exact SVD polar factors, row balancing run to float64 precision,
the tangent projection's row multipliers from a dense pseudo-inverse (the library uses CG), and
gradient ascent with an Armijo line search until the KKT residual is at round-off. At a KKT point
M = U·S + Λ·U with S symmetric and Λ diagonal; the residual min_{S,Λ} ‖M − US − ΛU‖_F/‖M‖_F is the
norm of the Riemannian gradient, the tangent projection of M/‖M‖_F, which :func:`optimum` returns.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the rows of a retraction are balanced until max_i |ℓ_i·m/n − 1| is below this: the final
#: feasibility is Newton's job, the ascent only has to stay close to the constraint set
BALANCE_TOLERANCE = 1e-10
#: Armijo's sufficient-increase fraction of the first-order gain t·‖Z‖²
ARMIJO = 1e-4


def svd_polar(Y: Tensor) -> Tensor:
    U, _, Vh = torch.linalg.svd(Y, full_matrices=False)
    return U @ Vh


def balanced_polar(Y: Tensor, max_polars: int = 2000) -> Tensor:
    """polar(D·Y) with the diagonal D > 0 that makes every row norm² n/m, by the β = 1/2 balancing."""
    m, n = Y.shape
    d = 1 / Y.norm(dim=1)
    for _ in range(max_polars):
        U = svd_polar(d[:, None] * Y)
        ratio = U.square().sum(dim=1) * m / n
        if (ratio - 1).abs().max() <= BALANCE_TOLERANCE:
            return U
        d = d / ratio.sqrt()
    raise AssertionError(f"balancing did not reach {BALANCE_TOLERANCE} (max row error {(ratio - 1).abs().max():.2e})")


def multipliers(X: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
    """The least-squares S (symmetric) and λ of X ≈ U·S + Λ·U, Λ = diag(λ)."""
    UtX = U.T @ X
    G = X - U @ ((UtX + UtX.T) / 2)
    P = U @ U.T
    A = torch.diag(P.diagonal()) - P * P  # the normal equations of Λ (its null space: Λ = c·I)
    lam = torch.linalg.pinv(A, hermitian=True) @ (G * U).sum(dim=1)
    S = U.T @ (X - lam[:, None] * U)
    return (S + S.T) / 2, lam


def riemannian_gradient(X: Tensor, U: Tensor) -> Tensor:
    """Projection of X onto the tangent space at U: X − U·S − Λ·U with the least-squares S and Λ."""
    S, lam = multipliers(X, U)
    return X - U @ S - lam[:, None] * U


def kkt_equations(M: Tensor, U: Tensor, S: Tensor, lam: Tensor) -> Tensor:
    """M − US − ΛU, the upper triangle of UᵀU − I and the rows' ‖U_i‖² − n/m, flattened."""
    m, n = U.shape
    rows, cols = torch.triu_indices(n, n)
    return torch.cat(
        [
            (M - U @ S - lam[:, None] * U).reshape(-1),
            (U.T @ U - torch.eye(n, dtype=U.dtype))[rows, cols],
            U.square().sum(dim=1) - n / m,
        ]
    )


def newton_kkt(X: Tensor, U: Tensor, steps: int = 30, tolerance: float = 1e-13) -> Tensor:
    """Newton's method on the KKT equations from a U near the maximizer; S and Λ start at their
    least-squares values. The Jacobian is singular along (S − cI, Λ + cI), so each step is the
    minimum-norm least-squares solution."""
    m, n = U.shape
    rows, cols = torch.triu_indices(n, n)
    S, lam = multipliers(X, U)

    def unpack(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        upper = torch.zeros(n, n, dtype=z.dtype)
        upper[rows, cols] = z[m * n : m * n + rows.numel()]
        return z[: m * n].reshape(m, n), upper + upper.T - torch.diag(upper.diagonal()), z[m * n + rows.numel() :]

    z = torch.cat([U.reshape(-1), S[rows, cols], lam])
    F = kkt_equations(X, *unpack(z))
    for _ in range(steps):
        if F.abs().max() <= tolerance:
            break
        J = torch.autograd.functional.jacobian(lambda v: kkt_equations(X, *unpack(v)), z, vectorize=True)
        step = torch.linalg.lstsq(J, F[:, None], driver="gelsd").solution[:, 0]
        for _ in range(30):  # damped: halve the step until the equations' residual decreases
            trial = kkt_equations(X, *unpack(z - step))
            if trial.norm() < F.norm():
                break
            step = step / 2
        z, F = z - step, trial
    return unpack(z)[0]


def optimum(M: Tensor, *, ascent_tolerance: float = 1e-4, max_steps: int = 5000) -> tuple[Tensor, float]:
    """The maximizer U (float64, M's orientation) and its KKT residual; M 2-D, any orientation.

    Gradient ascent until the residual is below ``ascent_tolerance`` (the maximizer's basin), then
    Newton's method on the KKT equations, kept if it stays feasible to 1e-12 and does not lower the
    objective (it converges to residuals ~1e-15 on Gaussian momenta; with a few rows 1e3–1e6× the
    rest the Jacobian's condition number is ~1e6 and it stalls, so the ascent's point is returned).
    Callers check the returned residual against what they need.
    """
    M = M.to(torch.float64)
    if M.shape[0] < M.shape[1]:
        U, residual = optimum(M.T, ascent_tolerance=ascent_tolerance, max_steps=max_steps)
        return U.T, residual
    m, n = M.shape
    X = M / M.norm()
    U = balanced_polar(X)
    value = (X * U).sum()
    t = 1.0
    for _ in range(max_steps):
        Z = riemannian_gradient(X, U)
        residual = Z.norm().item()
        if residual <= ascent_tolerance:
            break
        while True:
            candidate = balanced_polar(U + t * Z)
            candidate_value = (X * candidate).sum()
            if candidate_value >= value + ARMIJO * t * residual**2:
                break
            t /= 2
            assert t > 1e-14, "the line search found no ascent"
        U, value, t = candidate, candidate_value, 2 * t
    polished = newton_kkt(X, U)
    feasible = (polished.T @ polished - torch.eye(n, dtype=U.dtype)).abs().max() <= 1e-12
    feasible = feasible and (polished.square().sum(dim=1) * m / n - 1).abs().max() <= 1e-12
    if feasible and (X * polished).sum() >= value - 1e-12:
        U = polished
    return U, riemannian_gradient(X, U).norm().item()
