"""Neuron-health diagnostics for spectral (and any torch) optimizers."""

from .neuron_health import (
    INACTIVE_RATIO,
    STARVED_SHARE,
    HealthSnapshot,
    NeuronHealth,
    find_mlp_input_projections,
    inactive_fraction,
    leverage_histogram,
    leverage_scores,
    linear_features,
    relative_leverage,
    row_norm_spread,
    row_update_shares,
    unwrap_optimizer,
)

__all__ = [
    "INACTIVE_RATIO",
    "STARVED_SHARE",
    "HealthSnapshot",
    "NeuronHealth",
    "find_mlp_input_projections",
    "inactive_fraction",
    "leverage_histogram",
    "leverage_scores",
    "linear_features",
    "relative_leverage",
    "row_norm_spread",
    "row_update_shares",
    "unwrap_optimizer",
]
