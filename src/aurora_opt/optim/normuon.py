"""NorMuon: Muon with a per-row (per-neuron) second moment (Li et al., arXiv 2510.05491)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._spectral import SpectralOptimizer, _check_float, logical_matrix_shape, spectral_kwargs_doc


def normuon_direction(
    M: Tensor, neuron_variance: Tensor, *, orthogonalize: Callable[[Tensor], Tensor], beta2: float, eps: float
) -> Tensor:
    """O = polar(M); v ← β₂v + (1−β₂)·mean_j O_ij² (one per row); Ô = O/(√v + ε), rescaled to ‖O‖_F.

    ``neuron_variance`` is ``[B, m]`` and is updated in place.
    """
    O = orthogonalize(M)
    neuron_variance.lerp_(O.square().mean(dim=-1).to(neuron_variance.dtype), 1 - beta2)
    O_hat = O / (neuron_variance.to(O.dtype).sqrt().unsqueeze(-1) + eps)
    scale = torch.linalg.matrix_norm(O, keepdim=True) / (torch.linalg.matrix_norm(O_hat, keepdim=True) + eps)
    return O_hat * scale


class NorMuon(SpectralOptimizer):
    algorithm = "normuon"

    def __init__(
        self, params: ParamsT, lr: float = 0.02, weight_decay: float = 0.0, *, beta2: float = 0.95, **kwargs: Any
    ) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, algorithm_defaults={"beta2": beta2}, **kwargs)

    def _validate_algorithm(self, group: dict[str, Any]) -> None:
        _check_float("beta2", group["beta2"], 0.0, 1.0)
        if group["beta2"] == 1.0:
            raise ValueError("invalid beta2: 1.0 (expected a number in [0, 1))")

    def _init_state(self, p, state, group):
        super()._init_state(p, state, group)
        batch, m, _ = logical_matrix_shape(p, group)  # one statistic per output neuron
        state["neuron_variance"] = torch.zeros(batch, m, dtype=p.dtype, device=p.device)

    def _direction(self, M, state, group, orthogonalize):
        return normuon_direction(
            M, state["neuron_variance"], orthogonalize=orthogonalize, beta2=group["beta2"], eps=group["eps"]
        )


NorMuon.__doc__ = rf"""NorMuon: the polar factor normalized per row by a running second moment.

    Differences from :class:`Muon`: keeps one second-moment scalar per row (output neuron),
    ``state["neuron_variance"]``, divides each row of polar(M) by its square root and rescales the
    result to the Frobenius norm of polar(M). Rows become roughly equal, but the result is no longer
    semi-orthogonal.

    Args:{spectral_kwargs_doc(0.02, 0.0)}
        beta2 (float): decay of the per-row second moment (default: 0.95).
"""
