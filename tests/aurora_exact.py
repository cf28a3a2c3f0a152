"""Aurora's constrained optimum in float64, certified: max ⟨M, U⟩ s.t. UᵀU = I, ‖U_i‖² = n/m (M tall).

Damped Newton on the dual d(S, λ) = ½ Σ_i M_i (S + λ_i I)⁻¹ M_iᵀ + ½ tr S + (t/2) Σ_i λ_i over all of
(S, λ) jointly, with its dense Hessian (u_i = A_i⁻¹ M_iᵀ, A_i = S + λ_i I:
∂²d[dA, dA'] = Σ_i u_iᵀ dA A_i⁻¹ dA' u_i). The primal point U_i = u_iᵀ is returned with its
certificate: where U is feasible, weak duality gives ⟨M, U⟩ ≤ optimum ≤ d(S, λ), so the duality gap
bounds how far U is from the optimum, whatever method produced (S, λ). Small matrices only
(the Hessian has (n(n+1)/2 + m)² entries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Optimum:
    U: Tensor  #: the optimal direction [m, n]
    value: float  #: ⟨M, U⟩
    dual: float  #: d(S, λ) ≥ the optimum
    infeasibility: float  #: max(|UᵀU − I|, |‖U_i‖²/t − 1|)


#: relative eigenvalue below which a direction of the dual's Hessian counts as its null direction
#: (measured: the null eigenvalue ~1e-17, the smallest other ~6e-5 with two rows ×1e3)
NULL_EIGENVALUE = 1e-12


def _symmetric_basis(n: int, dtype: torch.dtype) -> Tensor:
    """B_k [K, n, n], K = n(n+1)/2: S = Σ_k x_k B_k for the upper-triangle entries x of S."""
    rows, cols = torch.triu_indices(n, n)
    basis = torch.zeros(rows.numel(), n, n, dtype=dtype)
    index = torch.arange(rows.numel())
    basis[index, rows, cols] = 1
    basis[index, cols, rows] = 1
    return basis


def exact_optimum(M: Tensor, *, iterations: int = 100) -> Optimum:
    """The certified optimum for a tall float64 M [m, n] (m > n) whose dual is tight."""
    norm = float(torch.linalg.matrix_norm(M.double()))
    M = M.double() / norm  # U does not depend on the scale of M; the values scale with it
    m, n = M.shape
    t = n / m
    basis = _symmetric_basis(n, M.dtype)
    K = basis.size(0)

    def evaluate(S: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(d, A⁻¹ [m, n, n], u [m, n], s_min + λ_min)."""
        s, Q = torch.linalg.eigh(S)
        shifted = s + lam[:, None]  # [m, n], eigenvalues of each A_i
        inverse = (Q * (1 / shifted)[:, None, :]) @ Q.mT
        u = (inverse @ M.unsqueeze(-1)).squeeze(-1)
        value = 0.5 * (u * M).sum() + 0.5 * S.trace() + 0.5 * t * lam.sum()
        return value, inverse, u, shifted.min()

    # start: S = (Mᵀ D² M)^{1/2} / median(D) with D = diag(1/‖M_i‖) (D = I would give U = polar(M) at
    # λ = 0; rows of equal weight start closer when a few rows dominate), and for each row the λ_i
    # that makes ‖U_i‖² = t, by bisection on (−s_min, ‖M_i‖/√t − s_min]
    D = 1 / M.norm(dim=-1, keepdim=True)
    w, Q = torch.linalg.eigh((D * M).mT @ (D * M))
    s = w.clamp_min(0).sqrt() / D.median()
    S = (Q * s) @ Q.mT
    R2 = (M @ Q).square()
    low = torch.full((m,), -float(s[0]), dtype=M.dtype)
    high = M.norm(dim=-1) / t**0.5 - s[0]
    for _ in range(200):
        mid = 0.5 * (low + high)
        too_long = (R2 / (s + mid[:, None]).square()).sum(dim=-1) > t
        low, high = torch.where(too_long, mid, low), torch.where(too_long, high, mid)
    lam = high
    value, inverse, u, _ = evaluate(S, lam)
    for _ in range(iterations):
        Bu = torch.einsum("kab,ib->ika", basis, u)  # B_k u_i: [m, K, n]
        grad = torch.cat(
            [
                0.5 * torch.einsum("kaa->k", basis) - 0.5 * torch.einsum("ika,ia->k", Bu, u),
                0.5 * t - 0.5 * u.square().sum(dim=-1),
            ]
        )
        inverse_u = (inverse @ u.unsqueeze(-1)).squeeze(-1)
        hessian = torch.empty(K + m, K + m, dtype=M.dtype)
        hessian[:K, :K] = ((Bu @ inverse) @ Bu.mT).sum(dim=0)
        hessian[:K, K:] = torch.einsum("ika,ia->ki", Bu, inverse_u)
        hessian[K:, :K] = hessian[:K, K:].mT
        hessian[K:, K:] = torch.diag((u * inverse_u).sum(dim=-1))
        # S + cI with λ − c is the Hessian's null direction: the pseudo-inverse from the symmetric
        # eigendecomposition takes the minimal step and keeps the decrement gᵀH⁺g ≥ 0 (least squares,
        # pivoted QR, returned non-descent steps in some runs once the null direction's rounding mixed in)
        eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
        kept = eigenvalues > NULL_EIGENVALUE * eigenvalues[-1]
        basis_kept = eigenvectors[:, kept]
        step = -basis_kept @ ((basis_kept.mT @ grad) / eigenvalues[kept])
        decrement = float(-(grad * step).sum())
        if decrement < 1e-24:  # M is normalized: d is O(1), and this is far below its round-off
            break
        # the sufficient-decrease test compares values of d that differ by about the decrement; below
        # d's own round-off it is decided by rounding (measured: it then stalled at infeasibility
        # ~1e-9 with two rows ×1e3), so there the full step is taken, which Newton's method converges
        # with once this close (2.5e-13), unless d rises beyond that round-off
        roundoff = 100 * torch.finfo(M.dtype).eps * abs(float(value))
        resolvable = decrement > roundoff
        alpha = 1.0
        while alpha > 1e-12:
            S_new = S + alpha * torch.einsum("k,kab->ab", step[:K], basis)
            lam_new = lam + alpha * step[K:]
            new = evaluate(S_new, lam_new)
            rise = float(new[0] - value)
            if new[3] > 0 and (rise <= -0.25 * alpha * decrement if resolvable else rise <= roundoff):
                break
            alpha *= 0.5
        else:
            break
        S, lam = S_new, lam_new
        value, inverse, u, _ = new
    U = u
    eye = torch.eye(n, dtype=M.dtype)
    infeasibility = max(float((U.mT @ U - eye).abs().max()), float((U.square().sum(dim=-1) / t - 1).abs().max()))
    return Optimum(U=U, value=norm * float((M * U).sum()), dual=norm * float(value), infeasibility=infeasibility)
