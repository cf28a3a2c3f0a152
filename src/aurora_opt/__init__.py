"""aurora-opt: Aurora and the Muon family of spectral optimizers for PyTorch."""

from . import diagnostics
from .optim import (
    Aurora,
    DualAurora,
    Muon,
    NonFiniteGradError,
    NorMuon,
    RiemannianAurora,
    SpectralOptimizer,
    UNorMuon,
)
from .param_groups import param_groups
from .polar import POLAR_BACKENDS, get_polar
from .registry import OPTIMIZERS, get_optimizer

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "POLAR_BACKENDS",
    "Aurora",
    "DualAurora",
    "Muon",
    "NonFiniteGradError",
    "NorMuon",
    "RiemannianAurora",
    "SpectralOptimizer",
    "UNorMuon",
    "diagnostics",
    "get_optimizer",
    "get_polar",
    "param_groups",
]
