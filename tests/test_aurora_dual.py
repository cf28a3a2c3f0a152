"""Dual Aurora against Aurora's certified float64 optimum (tests/aurora_exact.py).

Gap = (optimum − ⟨M, U⟩)/‖M‖_*, the objective given up relative to an exact Muon step's ⟨M, polar(M)⟩.
A slightly infeasible U can score above the optimum, so rows are checked beside the gap.
"""

from __future__ import annotations

import pytest
import torch
from aurora_exact import exact_optimum

from aurora_opt import DualAurora
from aurora_opt.optim import aurora_direction, dual_aurora_direction, sync_free
from aurora_opt.polar import make_orthogonalizer, svd_polar

#: the issue's targets: gap within 1e-4 on Gaussian momenta, 1e-3 when a few rows dominate by 1e3
GAUSSIAN_GAP = 1e-4
DOMINANT_GAP = 1e-3
#: every row within 1 % of its share n/m
ROW_TOLERANCE = 1e-2
#: fp32 n×n eigendecompositions leave UᵀU within ~1e-6 of I; 1e-4 still catches a missing direction
ORTHOGONALITY = 1e-4

FP32 = make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.float32)


def gaussian(m: int, n: int, seed: int, dominant: int = 0) -> torch.Tensor:
    """A float64 Gaussian m×n matrix whose first ``dominant`` rows are 1e3 times larger."""
    M = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    M[:dominant] *= 1e3
    return M


#: largest constraint violation of the reference point: measured ≤ 2.5e-13 on these 64×16 matrices
#: (Gaussian and 1–3 rows ×1e3, each perturbed by 1e-15 in 10 ways, 6 processes); float64 rounding
#: amplified by the dual Hessian's condition (~1e4 with dominant rows) sets it, 1e-10 leaves room
REFERENCE_INFEASIBILITY = 1e-10


class UncertifiedReference(AssertionError):
    """The float64 reference did not reach a feasible point within 1e-8 of its dual bound."""


def tall_quality(M: torch.Tensor, U: torch.Tensor) -> tuple[float, float, float]:
    """(gap to the certified optimum, max row error, max |UᵀU − I|) of a tall float64 M."""
    m, n = M.shape
    optimum = exact_optimum(M)
    nuclear = float(torch.linalg.matrix_norm(M, "nuc"))
    # the certificate: a (nearly) feasible U* within 1e-8 of the dual bound, which is ≥ the optimum;
    # the gap is taken to that bound, so it can only overstate the true gap (by ≤ 1e-8). U* may miss
    # the constraints by REFERENCE_INFEASIBILITY, which moves ⟨M, U*⟩ by about that much relative to
    # ‖M‖_*: two orders below the smallest gap tolerance checked (GAUSSIAN_GAP)
    if optimum.infeasibility > REFERENCE_INFEASIBILITY or abs(optimum.dual - optimum.value) > 1e-8 * nuclear:
        raise UncertifiedReference(f"infeasibility {optimum.infeasibility:.1e}")
    U = U.double()
    gap = (optimum.dual - float((M * U).sum())) / nuclear
    rows = float((U.square().sum(dim=-1) * m / n - 1).abs().max())
    orthogonality = float((U.mT @ U - torch.eye(n, dtype=U.dtype)).abs().max())
    return gap, rows, orthogonality


@pytest.mark.parametrize("dominant", [0, 2])
def test_cold_start_reaches_the_optimum(dominant):
    M = gaussian(64, 16, seed=1 + dominant, dominant=dominant)
    fallbacks = torch.zeros(2)
    # a batch of two: the same matrix in fp32, once from a cold and once from a given start
    U = dual_aurora_direction(
        torch.stack([M, M]).float(), orthogonalize=FP32, scaling=torch.ones(2, 64), fallbacks=fallbacks
    )
    assert torch.equal(fallbacks, torch.zeros(2))
    gap, rows, orthogonality = tall_quality(M, U[0])
    assert abs(gap) < (DOMINANT_GAP if dominant else GAUSSIAN_GAP)
    assert rows < ROW_TOLERANCE and orthogonality < ORTHOGONALITY
    # vanilla Aurora is measurably further away: the test can tell the two apart
    vanilla = aurora_direction(M[None], orthogonalize=svd_polar, balance_steps=8, balance_beta=None, eps=1e-7)
    assert tall_quality(M, vanilla[0])[0] > 3 * abs(gap)


def test_wide_matrix_with_dominant_columns_is_solved_transposed():
    M = gaussian(64, 16, seed=0, dominant=3)  # dominant rows of Mᵀ's tall form: columns of the wide one
    U = dual_aurora_direction(M.mT[None].float(), orthogonalize=FP32)[0]
    assert U.shape == (16, 64)
    gap, rows, orthogonality = tall_quality(M, U.mT)
    assert abs(gap) < DOMINANT_GAP and rows < ROW_TOLERANCE and orthogonality < ORTHOGONALITY


def drifting_momenta(m: int, n: int, steps: int, dominant: int, seed: int):
    """M_{t+1} = 0.95 M_t + 0.05 G_t with fresh Gaussian G_t (first ``dominant`` rows ×1e3)."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.ones(m, 1, dtype=torch.float64)
    scale[:dominant] = 1e3
    M = torch.randn(m, n, generator=generator, dtype=torch.float64) * scale
    for _ in range(steps):
        yield M
        M = 0.95 * M + 0.05 * torch.randn(m, n, generator=generator, dtype=torch.float64) * scale


@pytest.mark.parametrize("dominant", [0, 4])
def test_warm_start_follows_a_drifting_momentum(dominant):
    """One Newton step a step from the carried row weights and multipliers, checked at the last of 12."""
    scaling, multipliers, fallbacks = torch.ones(1, 64), torch.zeros(1, 64), torch.zeros(1)
    for M in drifting_momenta(64, 16, steps=12, dominant=dominant, seed=7):
        U = dual_aurora_direction(
            M[None].float(), orthogonalize=FP32, scaling=scaling, multipliers=multipliers, fallbacks=fallbacks
        )
    assert float(fallbacks) == 0
    gap, rows, orthogonality = tall_quality(M, U[0])
    assert abs(gap) < (DOMINANT_GAP if dominant else GAUSSIAN_GAP)
    assert rows < ROW_TOLERANCE and orthogonality < ORTHOGONALITY


@pytest.mark.slow
@pytest.mark.parametrize("dominant", [0, 4])
def test_warm_start_stays_at_the_optimum_every_step(dominant):
    """Every 5th of 30 steps; a step whose reference does not certify (its damped Newton can stall
    near the boundary of S + λ_i I ≻ 0) is not compared, and at most two of the six may be left out."""
    scaling, multipliers, fallbacks = torch.ones(1, 96), torch.zeros(1, 96), torch.zeros(1)
    uncertified = 0
    for step, M in enumerate(drifting_momenta(96, 24, steps=30, dominant=dominant, seed=11)):
        U = dual_aurora_direction(
            M[None].float(), orthogonalize=FP32, scaling=scaling, multipliers=multipliers, fallbacks=fallbacks
        )
        if step % 5 == 0:
            try:
                gap, rows, orthogonality = tall_quality(M, U[0])
            except UncertifiedReference:
                uncertified += 1
                continue
            assert abs(gap) < (DOMINANT_GAP if dominant else GAUSSIAN_GAP), step
            assert rows < ROW_TOLERANCE and orthogonality < ORTHOGONALITY, step
    assert float(fallbacks) == 0 and uncertified <= 2


def test_float64_matches_fp32_and_bf16_polar_backend_does_not_matter():
    M = gaussian(64, 16, seed=5)[None]
    U64 = dual_aurora_direction(M, orthogonalize=svd_polar)
    U32 = dual_aurora_direction(M.float(), orthogonalize=FP32)
    bf16 = make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.bfloat16)
    U_bf16 = dual_aurora_direction(M.float(), orthogonalize=bf16)
    torch.testing.assert_close(U32.double(), U64, rtol=0, atol=1e-4)  # fp32 round-off of the multipliers
    assert torch.equal(U32, U_bf16)  # the polar backend serves square matrices only


def test_rows_spread_over_three_decades_fall_back_to_vanilla_aurora_and_are_counted():
    """Where the dual is not tight the margin collapses: vanilla Aurora's point, one count."""
    M = gaussian(64, 16, seed=0) * torch.logspace(-1.5, 1.5, 64, dtype=torch.float64)[:, None]
    healthy = gaussian(64, 16, seed=1)
    fallbacks = torch.zeros(2)
    U = dual_aurora_direction(torch.stack([M, healthy]), orthogonalize=svd_polar, fallbacks=fallbacks)
    assert fallbacks.tolist() == [1.0, 0.0]
    # vanilla Aurora's point polar(D·M) at the same row weights: two Gram steps from a cold start
    vanilla = aurora_direction(M[None], orthogonalize=svd_polar, balance_steps=2, balance_beta=None, eps=1e-7)
    torch.testing.assert_close(U[:1], vanilla, rtol=0, atol=1e-9)


def test_zero_rows_get_zero_update_and_the_rest_stay_balanced():
    M = gaussian(64, 16, seed=2)
    M[[3, 40]] = 0
    fallbacks = torch.zeros(1)
    U = dual_aurora_direction(M[None].float(), orthogonalize=FP32, fallbacks=fallbacks)[0].double()
    assert float(fallbacks) == 0
    assert torch.equal(U[[3, 40]], torch.zeros(2, 16, dtype=U.dtype))
    rows = U.square().sum(dim=-1)[[i for i in range(64) if i not in (3, 40)]]
    assert float((rows * 62 / 16 - 1).abs().max()) < ROW_TOLERANCE


def test_optimizer_carries_row_weights_and_counts_fallbacks_without_host_sync():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(96, 24))
    optimizer = DualAurora([W], lr=0.01)
    with sync_free():
        for _ in range(3):
            W.grad = torch.randn(96, 24)
            optimizer.step()
    state = optimizer.state[W]
    assert state["dual_scaling"].shape == (1, 96) and not torch.equal(state["dual_scaling"], torch.ones(1, 96))
    assert bool((state["dual_multipliers"] > 0).all())
    assert optimizer.fallback_count() == 0


def test_the_first_fallback_warns_once_and_healthy_momenta_do_not(recwarn):
    """A rank-4 momentum has a dual that is not tight: vanilla Aurora's point, said once per optimizer."""
    generator = torch.Generator().manual_seed(0)
    low_rank = torch.nn.Parameter(torch.zeros(64, 16))
    optimizer = DualAurora([low_rank])
    for step in range(2):
        low_rank.grad = torch.randn(64, 4, generator=generator) @ torch.randn(4, 16, generator=generator)
        if step == 0:
            with pytest.warns(RuntimeWarning, match="vanilla Aurora's point") as caught:
                optimizer.step()
            assert caught[0].filename == __file__  # points at the caller's step()
        else:
            optimizer.step()
    assert optimizer.fallback_count() == 2
    healthy = torch.nn.Parameter(torch.zeros(64, 16))
    quiet = DualAurora([healthy])
    for _ in range(3):
        healthy.grad = torch.randn(64, 16, generator=generator)
        quiet.step()
    assert quiet.fallback_count() == 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # nor the second fallback
