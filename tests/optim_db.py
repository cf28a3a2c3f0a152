"""One entry per optimizer: the hyperparameter variants and bad inputs the generic suite runs over.

A new optimizer gets the whole generic suite (tests/test_optimizers.py) from one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class OptimInfo:
    #: constructor keyword variants; the first is the defaults
    variants: list[dict[str, Any]]
    #: (kwargs, the name the ValueError must mention) beyond the common ones
    error_inputs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    #: cheap settings for tests that only need the rule to run (e.g. fewer inner iterations)
    fast: dict[str, Any] = field(default_factory=dict)


COMMON_ERROR_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"momentum": 1.0}, "momentum"),
    ({"momentum": -0.5}, "momentum"),
    ({"nesterov": "yes"}, "nesterov"),
    ({"eps": 0.0}, "eps"),
    ({"adjust_lr_fn": "spectral"}, "adjust_lr_fn"),
    ({"polar": "qr"}, "polar"),
    ({"ns_steps": 0}, "ns_steps"),
    ({"polar_dtype": torch.int32}, "polar_dtype"),
    ({"polar_reduction": "lu"}, "polar_reduction"),
    ({"on_nonfinite_grad": "ignore"}, "on_nonfinite_grad"),
    ({"adamw_betas": (0.9, 1.0)}, "betas"),
    ({"adamw_lr": -3e-4}, "lr"),
]

COMMON_VARIANTS: list[dict[str, Any]] = [
    {"nesterov": False},
    {"momentum": 0.0},
    {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.1},
    {"polar": "newton_schulz"},
]
#: every optimizer that computes m×n polar factors can reduce them (DualAurora computes none)
REDUCED = {"polar_reduction": "qr"}

OPTIM_DB: dict[str, OptimInfo] = {
    "muon": OptimInfo(variants=[{}, *COMMON_VARIANTS, REDUCED]),
    "normuon": OptimInfo(
        variants=[{}, *COMMON_VARIANTS, REDUCED, {"beta2": 0.5}],
        error_inputs=[({"beta2": 1.0}, "beta2"), ({"beta2": -0.1}, "beta2")],
    ),
    "unormuon": OptimInfo(variants=[{}, *COMMON_VARIANTS, REDUCED]),
    "aurora": OptimInfo(
        variants=[
            {},
            *COMMON_VARIANTS,
            REDUCED,
            {"balance_steps": 5, "balance_beta": 1.0},
            {"row_correction": False},
            {"gram_matmul_dtype": torch.bfloat16},
        ],
        error_inputs=[
            ({"balance_steps": 0}, "balance_steps"),
            ({"balance_beta": 0.0}, "balance_beta"),
            ({"balance_beta": 1.5}, "balance_beta"),
            ({"balance_tolerance": -1e-3}, "balance_tolerance"),
            ({"balance": "qr"}, "balance"),
            ({"row_correction": 1}, "row_correction"),
            ({"gram_matmul_dtype": torch.float64}, "gram_matmul_dtype"),
            ({"gram_matmul_dtype": "bf16"}, "gram_matmul_dtype"),
            ({"gram_matmul_dtype": torch.bfloat16, "balance": "polar"}, "gram_matmul_dtype"),
        ],
    ),
    "riemannian_aurora": OptimInfo(
        variants=[{}, *COMMON_VARIANTS, REDUCED, {"ascent_steps": 0}],
        error_inputs=[
            ({"ascent_steps": -1}, "ascent_steps"),
            ({"cg_steps": 0}, "cg_steps"),
            ({"balance_steps": 0}, "balance_steps"),
        ],
        fast={"ascent_steps": 2, "cg_steps": 5, "balance_steps": 4},
    ),
    "dual_aurora": OptimInfo(
        variants=[{}, *COMMON_VARIANTS, {"newton_steps": 2, "cg_steps": 3}],
        error_inputs=[
            ({"balance_steps": -1}, "balance_steps"),
            ({"newton_steps": -1}, "newton_steps"),
            ({"cg_steps": 0}, "cg_steps"),
            (REDUCED, "polar_reduction"),
        ],
    ),
}
