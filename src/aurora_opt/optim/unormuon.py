"""U-NorMuon: the polar factor with every row scaled to the norm of a row-uniform semi-orthogonal matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.optim.optimizer import ParamsT

from ..matrices import row_norms
from ._spectral import SpectralOptimizer, spectral_kwargs_doc


def unormuon_direction(M: Tensor, *, orthogonalize: Callable[[Tensor], Tensor], eps: float) -> Tensor:
    """Rows of polar(M) rescaled to norm sqrt(min(m, n)/m) (sqrt(n/m) when tall, 1 when wide).

    A row that is zero (a neuron with no gradient) stays zero.
    """
    U = orthogonalize(M)
    m, n = M.shape[-2:]
    target = (min(m, n) / m) ** 0.5
    row_norm = row_norms(U)
    return U * (target / row_norm.clamp_min(eps)) * (row_norm > eps)


class UNorMuon(SpectralOptimizer):
    algorithm = "unormuon"

    def __init__(self, params: ParamsT, lr: float = 0.02, weight_decay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)

    def _direction(self, M, state, group, orthogonalize):
        return unormuon_direction(M, orthogonalize=orthogonalize, eps=group["eps"])


UNorMuon.__doc__ = rf"""U-NorMuon: the polar factor, each row normalized to sqrt(n/m).

    Differences from :class:`Muon`: every row of a tall update gets the same norm, the norm rows of
    a row-uniform semi-orthogonal m×n matrix have, so no neuron is starved; the rows are rescaled
    after the polar factor, so the result is not semi-orthogonal (the polar geometry is left as it
    is). :class:`Aurora` satisfies both constraints at once. Stateless beyond the momentum.

    Args:{spectral_kwargs_doc(0.02, 0.0)}"""
