"""Muon: the polar factor of the Nesterov momentum (Keller Jordan, 2024)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from ._spectral import SpectralOptimizer, spectral_kwargs_doc


def muon_direction(M: Tensor, *, orthogonalize: Callable[[Tensor], Tensor]) -> Tensor:
    """U = polar(M) for momentum matrices M [B, m, n]."""
    return orthogonalize(M)


class Muon(SpectralOptimizer):
    algorithm = "muon"

    def __init__(self, params: ParamsT, lr: float = 0.02, weight_decay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)

    def _direction(self, M, state, group, orthogonalize):
        return muon_direction(M, orthogonalize=orthogonalize)


Muon.__doc__ = rf"""Muon: momentum orthogonalized by its polar factor.

    .. math::
        b_t = μ b_{{t-1}} + (1-μ) g_t,\quad M_t = g_t + μ(b_t - g_t)\ \text{{(Nesterov)}},\quad
        W_t = (1 - ηλ) W_{{t-1}} - η\,s(m, n)\,\mathrm{{polar}}(M_t)

    For hidden weight matrices (2-D; 3-D as stacks; conv weights flattened to (out, in·kh·kw)).
    Embeddings, the output head, norms and biases belong in an ``"adamw"`` group
    (see :func:`aurora_opt.param_groups`). On a tall matrix the polar factor leaves each row's share
    of the update free, which is what :class:`Aurora` constrains.

    Args:{spectral_kwargs_doc(0.02, 0.0)}"""
