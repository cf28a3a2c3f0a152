"""Dual Aurora: Aurora's constrained argmax by dual Newton, warm-started across steps."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from ..matrices import matrix_shape
from ..sync import host_syncs_allowed
from ._spectral import SpectralOptimizer, _check_int, spectral_kwargs_doc
from .aurora_dual import dual_aurora_direction


class DualAurora(SpectralOptimizer):
    algorithm = "dual_aurora"
    stacked_state = ("dual_scaling", "dual_multipliers", "dual_fallbacks")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.02,
        weight_decay: float = 0.025,
        *,
        balance_steps: int = 2,
        newton_steps: int = 2,
        cg_steps: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            weight_decay=weight_decay,
            algorithm_defaults={
                "balance_steps": balance_steps,
                "newton_steps": newton_steps,
                "cg_steps": cg_steps,
            },
            **kwargs,
        )
        self._fallback_warned = False

    def _validate_algorithm(self, group: dict[str, Any]) -> None:
        if group["polar_reduction"] is not None:
            raise ValueError(
                f"invalid polar_reduction: {group['polar_reduction']!r} (DualAurora computes no m×n polar factor "
                "to reduce: its directions come from n×n eigendecompositions; expected None)"
            )
        _check_int("balance_steps", group["balance_steps"], 0)
        _check_int("newton_steps", group["newton_steps"], 0)
        _check_int("cg_steps", group["cg_steps"], 1)

    def _init_state(self, p, state, group):
        super()._init_state(p, state, group)
        batch, m, n = matrix_shape(p.shape)
        if m != n:
            # r_i = d_i·‖M_i‖ over the rows of the tall orientation (1 = cold start), the row
            # multipliers μ_i = λ_i + s_min (0 = cold start), and per matrix the number of steps
            # that fell back to vanilla Aurora's point
            state["dual_scaling"] = torch.ones(batch, max(m, n), dtype=torch.float32, device=p.device)
            state["dual_multipliers"] = torch.zeros(batch, max(m, n), dtype=torch.float32, device=p.device)
            state["dual_fallbacks"] = torch.zeros(batch, dtype=torch.float32, device=p.device)

    def _direction(self, M, state, group, orthogonalize):
        fallbacks = state.get("dual_fallbacks")
        # eager on the CPU a fallback is reported once (elsewhere reading the count would synchronize)
        watch = fallbacks is not None and not self._fallback_warned and host_syncs_allowed(fallbacks)
        before = float(fallbacks.sum()) if watch else 0.0
        U = dual_aurora_direction(
            M,
            orthogonalize=orthogonalize,
            scaling=state.get("dual_scaling"),
            multipliers=state.get("dual_multipliers"),
            fallbacks=state.get("dual_fallbacks"),
            balance_steps=group["balance_steps"],
            newton_steps=group["newton_steps"],
            cg_steps=group["cg_steps"],
            eps=group["eps"],
        )
        if watch and float(fallbacks.sum()) > before:
            self._fallback_warned = True
            warnings.warn(
                f"DualAurora: a {M.size(-2)}×{M.size(-1)} matrix got vanilla Aurora's point instead of the "
                "dual-Newton direction (its dual was not tight or the point not certified better), at the full "
                "cost of the dual scheme. Its dual is not tight on rank-deficient momenta, rows spread over decades "
                "and most momenta recorded from training a small GPT (4 of 5 matrix-steps there). Counted per matrix "
                "in state['dual_fallbacks'] (fallback_count() sums them); warned once per optimizer.",
                RuntimeWarning,
                stacklevel=8,  # the line that calls optimizer.step()
            )
        return U

    def fallback_count(self) -> int:
        """Steps × matrices, summed over all parameters, that got vanilla Aurora's point (reading syncs)."""
        counts = [s["dual_fallbacks"].sum() for s in self.state.values() if "dual_fallbacks" in s]
        return int(torch.stack(counts).sum()) if counts else 0


DualAurora.__doc__ = rf"""Dual Aurora: Aurora's constrained argmax from Newton's method on its dual.

    The direction of :class:`RiemannianAurora` (argmax of ⟨M, U⟩ over UᵀU = I with every
    ‖U_i‖² = n/m), found by minimizing the dual d(S, λ) = ½ Σ_i M_i (S + λ_i I)⁻¹ M_iᵀ + ½ tr S +
    (n/2m) Σ λ_i over S (``newton_steps`` Newton steps, ``cg_steps`` CG iterations each) with each λ_i
    solved exactly, started from Aurora's Gram-balanced row weights (``balance_steps`` Gram steps
    from last step's weights, ``state["dual_scaling"]``, each λ_i solve from last step's multiplier,
    ``state["dual_multipliers"]``), and finished by U = polar(E·M(S + Λ)⁻¹)
    with one row-balancing step E, computed from an n×n eigendecomposition: no m×n polar factor
    (three n×n eigendecompositions per step instead; the polar backend serves square matrices, and
    ``polar_reduction`` must stay ``None``).
    Where the dual is not tight (row norms spread over several decades) or the result is not
    certified better than vanilla Aurora's point, that point is used and
    ``state["dual_fallbacks"]`` (one count per matrix) goes up; :meth:`fallback_count` sums them,
    and eager on the CPU the first fallback warns (``RuntimeWarning``, once per optimizer). On
    momenta recorded from training a small GPT most matrix-steps fall back.
    Square matrices: Muon's polar factor. Wide: the rule on Mᵀ.

    Args:{spectral_kwargs_doc(0.02, 0.025)}
        balance_steps (int): Gram balancing steps of the row weights per step, besides the one
            that comes free with the eigendecomposition (default: 2). On momenta whose rows spread
            over two decades (the bench's synthetic GPT gradients) fewer leave vanilla Aurora's
            point, the fallback, with rows ~15 % off.

        newton_steps (int): Newton steps on the dual per step (default: 2; with 1, the GPT momenta
            above end with rows 2–4 % off and fall back every step).
        cg_steps (int): preconditioned CG iterations per Newton step (default: 2).
"""
