"""One module per optimizer over the shared shell in ``_spectral``."""

from ..sync import sync_free
from ._spectral import NonFiniteGradError, SpectralOptimizer, adjust_lr, as_matrices, lookahead_momentum
from .aurora import Aurora, aurora_direction, balanced_polar, row_uniformity_error
from .aurora_dual import dual_aurora_direction
from .dual_aurora import DualAurora
from .muon import Muon, muon_direction
from .normuon import NorMuon, normuon_direction
from .riemannian_aurora import RiemannianAurora, riemannian_aurora_direction
from .unormuon import UNorMuon, unormuon_direction

__all__ = [
    "Aurora",
    "DualAurora",
    "Muon",
    "NonFiniteGradError",
    "NorMuon",
    "RiemannianAurora",
    "SpectralOptimizer",
    "UNorMuon",
    "adjust_lr",
    "as_matrices",
    "aurora_direction",
    "balanced_polar",
    "dual_aurora_direction",
    "lookahead_momentum",
    "muon_direction",
    "normuon_direction",
    "riemannian_aurora_direction",
    "row_uniformity_error",
    "sync_free",
    "unormuon_direction",
]
