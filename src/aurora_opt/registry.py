"""Every optimizer by name: the CLI, the benchmarks and the test suite all read this table."""

from __future__ import annotations

from .optim import Aurora, DualAurora, Muon, NorMuon, RiemannianAurora, SpectralOptimizer, UNorMuon

OPTIMIZERS: dict[str, type[SpectralOptimizer]] = {
    cls.algorithm: cls for cls in (Muon, NorMuon, UNorMuon, Aurora, RiemannianAurora, DualAurora)
}


def get_optimizer(name: str) -> type[SpectralOptimizer]:
    """The optimizer class called ``name`` (e.g. ``"aurora"``)."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}") from None
