"""``weight_layout="in_out"``: a weight stored (in, out), as transformers' GPT-2 ``Conv1D`` does, is
trained exactly as its ``nn.Linear`` twin (the same weight stored (out, in))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aurora_opt
from aurora_opt import OPTIMIZERS, get_optimizer
from optim_db import OPTIM_DB

NAMES = sorted(OPTIMIZERS)
# logical (out, in) shapes: tall (an MLP up projection), wide, square, a stack of tall matrices
LOGICAL_SHAPES = [(24, 8), (8, 24), (12, 12), (2, 16, 6)]
# The two runs do the same arithmetic on transposed operands: matmuls of M and Mᵀ sum in a
# different order, so they agree to fp32 rounding, amplified a little by 3 steps of momentum.
TWIN_ATOL = 1e-5


def twins(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    linear = [nn.Parameter(torch.randn(*s, generator=g)) for s in LOGICAL_SHAPES]
    conv1d = [nn.Parameter(p.detach().mT.clone()) for p in linear]
    return linear, conv1d


@pytest.mark.parametrize("name", NAMES)
def test_in_out_weights_get_the_update_of_their_linear_twin(name):
    linear, conv1d = twins()
    initial = [p.detach().clone() for p in linear]
    kwargs = {**OPTIM_DB[name].fast, "weight_decay": 0.1}
    opt_linear = get_optimizer(name)(linear, **kwargs)
    opt_conv1d = get_optimizer(name)([{"params": conv1d, "weight_layout": "in_out"}], **kwargs)
    for t in range(3):
        g = torch.Generator().manual_seed(100 + t)
        for a, b in zip(linear, conv1d):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.mT.contiguous()
        opt_linear.step()
        opt_conv1d.step()
    for a, b, a0 in zip(linear, conv1d, initial):
        assert not torch.allclose(a, a0, atol=1e-3)  # it moved
        torch.testing.assert_close(b.mT, a, rtol=0, atol=TWIN_ATOL)
    # per-neuron state lies on output neurons in both layouts
    for a, b in zip(linear, conv1d):
        for key, value in opt_linear.state[a].items():
            expected = value.mT if key == "momentum_buffer" else value
            torch.testing.assert_close(opt_conv1d.state[b][key], expected, rtol=0, atol=TWIN_ATOL)


def test_in_out_shape_scale_is_that_of_the_logical_matrix():
    # one Muon step on a 64→256 layer: update spectral norm lr·sqrt(256/64) in both layouts
    W = nn.Parameter(torch.zeros(64, 256))
    W.grad = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    aurora_opt.Muon([{"params": [W], "weight_layout": "in_out"}], lr=0.02, polar="svd").step()
    assert torch.linalg.matrix_norm(W.detach(), ord=2) == pytest.approx(0.04, rel=1e-5)


def test_weight_layout_is_validated():
    W = nn.Parameter(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="weight_layout"):
        aurora_opt.Muon([{"params": [W], "weight_layout": "transposed"}])
    with pytest.raises(ValueError, match="weight_layout"):
        aurora_opt.Muon([{"params": [nn.Parameter(torch.zeros(4, 2, 3, 3))], "weight_layout": "in_out"}])
    assert aurora_opt.Muon([W]).param_groups[0]["weight_layout"] == "out_in"


def test_checkpoint_without_weight_layout_loads():
    W = nn.Parameter(torch.zeros(4, 8))
    state = aurora_opt.Muon([W]).state_dict()
    del state["param_groups"][0]["weight_layout"]
    opt = aurora_opt.Muon([W])
    opt.load_state_dict(state)
    assert opt.param_groups[0]["weight_layout"] == "out_in"
