"""Each optimizer against the slow float64 reference of its documented update (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aurora_opt import get_optimizer
from aurora_opt.optim import adjust_lr
from reference import exact_polar, reference_step, unequal_rows

# Both sides compute in float64 with an exact SVD polar factor; they differ only in the order of
# operations (vectorized vs loops), which moves results by a few ulps per step: 1e-10 absolute on
# entries of size ~1 leaves room for ~1e5 ulps over 4 steps and still catches any formula error.
REFERENCE_ATOL = 1e-10

HYPER = {
    "muon": {},
    "normuon": {"beta2": 0.9},
    "unormuon": {},
    "aurora": {"balance": "polar", "balance_steps": 3, "balance_beta": 0.5, "row_correction": False},
    "aurora_row_corrected": {"balance": "polar", "balance_steps": 3, "balance_beta": 0.5, "row_correction": True},
}
SETTINGS = [
    {"lr": 0.02, "weight_decay": 0.0, "momentum": 0.95, "nesterov": True, "eps": 1e-7},
    {
        "lr": 0.05,
        "weight_decay": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "eps": 1e-7,
        "adjust_lr_fn": "match_rms_adamw",
    },
    {"lr": 0.01, "weight_decay": 0.0, "momentum": 0.0, "nesterov": True, "eps": 1e-7},
]
SHAPES = [(24, 6), (6, 24), (10, 10)]


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("shape", SHAPES, ids=["tall", "wide", "square"])
@pytest.mark.parametrize("name", sorted(HYPER))
def test_matches_reference(name, shape, setting):
    hp = {**SETTINGS[setting], **HYPER[name]}
    g = torch.Generator().manual_seed(0)
    W0 = torch.randn(*shape, generator=g, dtype=torch.float64)
    param = nn.Parameter(W0.clone())
    algorithm = name.split("_")[0]
    opt = get_optimizer(algorithm)([param], polar="svd", polar_dtype=torch.float64, **hp)
    W, state = W0.clone(), {}
    for _ in range(4):
        G = unequal_rows(*shape, g)
        param.grad = G.clone()
        opt.step()
        W = reference_step(algorithm, W, G, state, **hp)
        torch.testing.assert_close(param.detach(), W, rtol=0, atol=REFERENCE_ATOL)


def test_momentum_zero_is_the_orthogonalized_gradient():
    # Muon with momentum 0: W ← W − lr·s·polar(G) exactly (float64 SVD on both sides)
    g = torch.Generator().manual_seed(1)
    W0, G = torch.randn(30, 10, generator=g, dtype=torch.float64), torch.randn(30, 10, generator=g, dtype=torch.float64)
    p = nn.Parameter(W0.clone())
    opt = get_optimizer("muon")([p], lr=0.1, momentum=0.0, polar="svd", polar_dtype=torch.float64)
    p.grad = G
    opt.step()
    expected = W0 - adjust_lr(0.1, None, 30, 10) * exact_polar(G)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=REFERENCE_ATOL)


def test_muon_matches_torch_optim_muon():
    # torch.optim.Muon runs Keller's 5-step quintic in bf16 and normalizes by ‖G‖ (clamped at eps);
    # ours adds eps to ‖G‖. With the same backend and precision the updates agree to bf16 rounding:
    # the update is ~lr·s = 0.02·sqrt(3) per entry scale and bf16 relative error ~1e-2, so 1e-3 absolute.
    g = torch.Generator().manual_seed(2)
    W0 = torch.randn(48, 16, generator=g)
    ours, theirs = nn.Parameter(W0.clone()), nn.Parameter(W0.clone())
    opt = get_optimizer("muon")([ours], lr=0.02, weight_decay=0.01, polar="newton_schulz", polar_dtype=torch.bfloat16)
    ref = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.01)
    for _ in range(3):
        G = torch.randn(48, 16, generator=g)
        ours.grad, theirs.grad = G.clone(), G.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=1e-3)
