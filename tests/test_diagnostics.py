"""Neuron-health diagnostics on hand-built matrices with known shares, leverage and activity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import aurora_opt
from aurora_opt import OPTIMIZERS
from aurora_opt.diagnostics import (
    NeuronHealth,
    find_mlp_input_projections,
    inactive_fraction,
    leverage_scores,
    relative_leverage,
    row_norm_spread,
    row_update_shares,
)
from aurora_opt.train.gpt import GPT, GPTConfig

#: float64 SVD of a well-conditioned matrix reproduces leverage to about 1e-15; 1e-10 leaves headroom
SVD_ATOL = 1e-10
#: ΔW is a difference of float32 weights: its relative error is about ε32·‖W_i‖/‖ΔW_i‖ ≈ 6e-8 × 50 for the
#: smallest row below, so 1e-5 on the shares leaves a 3x margin
SHARE_RTOL = 1e-5
#: Aurora's two balancing steps on rows spanning a 1000:1 norm range leave shares about 10 % from
#: uniform (measured 0.101 at most here); 0.25 still separates them from a starved share (< 0.1) by far
AURORA_K2_SHARE_SPREAD = 0.25


def test_row_update_shares_known_values():
    # row energies 1, 1, 1, 5: mean 2, so shares 0.5, 0.5, 0.5, 2.5
    delta = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 2.0]])
    torch.testing.assert_close(row_update_shares(delta), torch.tensor([0.5, 0.5, 0.5, 2.5], dtype=torch.float64))
    assert float(row_update_shares(delta).mean()) == pytest.approx(1.0)
    assert torch.equal(row_update_shares(torch.zeros(3, 2)), torch.zeros(3, dtype=torch.float64))


def _with_left_factor(Q: torch.Tensor, singular_values: list[float], seed: int = 0) -> torch.Tensor:
    """M = Q diag(s) Vᵀ for an orthonormal-column Q and a random orthogonal V: polar(M) = Q Vᵀ."""
    n = Q.size(1)
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ V.T


def test_leverage_scores_of_known_factors():
    coordinate = torch.zeros(4, 2, dtype=torch.float64)
    coordinate[0, 0] = coordinate[1, 1] = 1.0  # rows 0, 1 hold all the leverage
    M = _with_left_factor(coordinate, [3.0, 0.2])
    torch.testing.assert_close(
        leverage_scores(M), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=SVD_ATOL, rtol=0
    )
    torch.testing.assert_close(
        relative_leverage(M), torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64), atol=SVD_ATOL, rtol=0
    )

    uniform = torch.tensor([[1, 1], [1, -1], [1, 1], [1, -1]], dtype=torch.float64) / 2  # every ℓ_i = 1/2
    M = _with_left_factor(uniform, [5.0, 1e-3], seed=1)
    torch.testing.assert_close(relative_leverage(M), torch.ones(4, dtype=torch.float64), atol=SVD_ATOL, rtol=0)


def test_leverage_counts_rank_only():
    u = torch.tensor([[3.0], [4.0], [0.0]], dtype=torch.float64) / 5
    M = u @ torch.tensor([[1.0, 2.0]], dtype=torch.float64)  # rank 1: ℓ = u_i², summing to 1
    torch.testing.assert_close(
        leverage_scores(M), torch.tensor([0.36, 0.64, 0.0], dtype=torch.float64), atol=SVD_ATOL, rtol=0
    )


def test_inactive_fraction_and_row_norm_spread():
    means = torch.tensor([1.0, 1.2, 0.9, 1.1, 0.05, 0.08, 1.0, 1.0])  # median 1.0; two units below 0.1
    assert inactive_fraction(means) == pytest.approx(0.25)
    assert row_norm_spread(torch.ones(5, 3)) == 0.0
    W = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # norms 1, 3: mean 2, std 1
    assert row_norm_spread(W) == pytest.approx(0.5)


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8, bias=False)
        self.down = nn.Linear(8, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.fc(x))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = TinyMLP()


def test_shares_and_starved_fraction_from_a_known_update():
    net = TinyNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    health = NeuronHealth(net).attach(optimizer)
    assert list(health.projections) == ["mlp.fc"]
    assert health.activation_sites == {"mlp": "mlp.down"}
    row_scale = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.01, 0.2])
    grad = row_scale[:, None] * torch.ones(8, 4)
    for _ in range(3):
        net.mlp.fc.weight.grad = grad.clone()
        optimizer.step()
    energy = row_scale.double() ** 2
    expected = (energy / energy.mean()).float()
    torch.testing.assert_close(health.smoothed_shares["mlp.fc"], expected, rtol=SHARE_RTOL, atol=0)
    # share of row 6: 1e-4 / mean energy ≈ 1.6e-4 < 0.1 (starved); row 7: 0.04 / 0.755 ≈ 0.053 < 0.1 (starved)
    assert health.starved_fraction() == pytest.approx(2 / 8)
    assert health.layer_starved() == {"mlp.fc": pytest.approx(0.25)}
    assert health.step == 3 and health.measured_steps == 3


def test_every_n_steps_and_skipped_updates():
    net = TinyNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    health = NeuronHealth(net, every=2).attach(optimizer)
    for _ in range(5):
        net.mlp.fc.weight.grad = torch.ones(8, 4)
        optimizer.step()
    assert health.step == 5 and health.measured_steps == 3  # steps 0, 2, 4
    net.mlp.fc.weight.grad = torch.zeros(8, 4)  # an update of zero carries no share information
    optimizer.step()
    optimizer.step()
    assert health.measured_steps == 3
    health.detach()
    optimizer.step()
    assert health.step == 7


def test_activation_hook_finds_inactive_units():
    net = TinyNet()
    with torch.no_grad():
        net.mlp.fc.weight.fill_(1.0)
        net.mlp.fc.weight[:3] *= 0.01  # units 0-2 get activations 100x below the others
    health = NeuronHealth(net)
    x = torch.randn(16, 4)
    net.train()
    net.mlp(x)
    net.eval()
    net.mlp(100 * x)  # evaluation forwards are not counted
    means = health.activation_means()["mlp"]
    torch.testing.assert_close(means.float(), net.mlp.fc(x).abs().mean(0).detach(), rtol=1e-6, atol=0)
    assert health.measure().act_dead_fraction == pytest.approx(3 / 8)
    assert health.activation_means() == {}  # measure() starts a new averaging window


def test_finds_projections_of_the_gpt():
    swiglu = GPT(GPTConfig(n_layer=2, d_model=16, n_head=2, seq_len=8))
    assert sorted(find_mlp_input_projections(swiglu)) == [
        f"blocks.{i}.mlp.{n}" for i in range(2) for n in ("gate", "up")
    ]
    gelu = GPT(GPTConfig(n_layer=2, d_model=16, n_head=2, seq_len=8, mlp="gelu"))
    assert sorted(find_mlp_input_projections(gelu)) == ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]
    health = NeuronHealth(gelu)
    assert health.activation_sites == {"blocks.0.mlp": "blocks.0.mlp.down", "blocks.1.mlp": "blocks.1.mlp.down"}
    assert list(NeuronHealth(gelu, modules=["blocks.1.mlp.fc"]).projections) == ["blocks.1.mlp.fc"]
    with pytest.raises(ValueError, match="not an nn.Linear"):
        NeuronHealth(gelu, modules=["blocks.1.mlp"])


def _make_optimizers(name: str, model: GPT) -> list[torch.optim.Optimizer]:
    groups = model.param_groups()
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=1e-3)]
    if name == "torch_muon":
        return [torch.optim.Muon(groups[0]["params"], lr=0.02), torch.optim.AdamW(groups[1]["params"], lr=1e-3)]
    return [OPTIMIZERS[name](groups)]


@pytest.mark.parametrize("name", [*OPTIMIZERS, "adamw", "torch_muon"])
def test_diagnostics_leave_the_update_unchanged(name):
    steps = 1 if name == "riemannian_aurora" else 2  # its CG solve takes seconds per step on a loaded CPU

    def run(with_health: bool) -> tuple[GPT, NeuronHealth | None, list[torch.optim.Optimizer]]:
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=1, d_model=8, n_head=2, seq_len=8))
        optimizers = _make_optimizers(name, model)
        health = NeuronHealth(model).attach(*optimizers) if with_health else None
        tokens = torch.randint(0, 256, (4, 9), generator=torch.Generator().manual_seed(1))
        for _ in range(steps):
            model(tokens[:, :-1], tokens[:, 1:]).backward()
            for opt in optimizers:
                opt.step()
        return model, health, optimizers

    plain, _, _ = run(False)
    watched, health, optimizers = run(True)
    for (key, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), key
    assert health.measured_steps == steps
    for shares in health.smoothed_shares.values():
        assert float(shares.mean()) == pytest.approx(1.0, rel=1e-5)  # shares average to 1 by definition
    leverage = health.leverage(*optimizers)
    assert set(leverage) == {"blocks.0.mlp.gate", "blocks.0.mlp.up"}
    for values in leverage.values():
        assert values.shape == (32,) and math.isfinite(float(values.sum()))


def test_aurora_keeps_rows_fed_where_muon_starves_them():
    """A tall gradient with a few tiny rows: Muon's polar factor gives those rows almost no update
    (starved), Aurora's row-uniform factor gives every row the uniform share."""
    scales = torch.ones(32)
    scales[:8] = 1e-3
    gen = torch.Generator().manual_seed(0)
    grad = scales[:, None] * torch.randn(32, 8, generator=gen)
    starved = {}
    for name in ("muon", "aurora"):
        W = nn.Linear(8, 32, bias=False)
        net = nn.Module()
        net.fc = W
        optimizer = OPTIMIZERS[name]([W.weight], weight_decay=0.0)
        health = NeuronHealth(net).attach(optimizer)
        for _ in range(3):
            W.weight.grad = grad.clone()
            optimizer.step()
        starved[name] = health.starved_fraction()
        if name == "aurora":
            shares = health.smoothed_shares["fc"]
            assert float((shares - 1).abs().max()) < AURORA_K2_SHARE_SPREAD
    assert starved["muon"] == pytest.approx(8 / 32)
    assert starved["aurora"] == 0.0


def test_state_dict_round_trip():
    net = TinyNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    health = NeuronHealth(net).attach(optimizer)
    net.train()
    net.mlp(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    state = health.state_dict()
    other = NeuronHealth(TinyNet())
    other.load_state_dict(state)
    assert other.step == 1 and torch.equal(other.smoothed_shares["mlp.fc"], health.smoothed_shares["mlp.fc"])
    assert torch.equal(other.activation_means()["mlp"], health.activation_means()["mlp"])


@pytest.mark.parametrize("name", ["muon", "normuon"])
def test_conv1d_mlp_reads_as_its_linear_twin(name):
    from models import GPT2MLP

    conv1d = GPT2MLP()
    linear = conv1d.linear_twin()
    healths, optimizers = [], []
    for model in (conv1d, linear):
        optimizer = OPTIMIZERS[name](aurora_opt.param_groups(model, head_names=("c_proj",)), lr=0.05)
        healths.append(NeuronHealth(model).attach(optimizer))
        optimizers.append(optimizer)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for model, optimizer in zip((conv1d, linear), optimizers):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert set(healths[0].projections) == {"c_fc"} and healths[0].activation_sites == {"c_fc": "c_proj"}
    # same update up to transpose (tests/test_weight_layout.py), so the same shares up to fp32 rounding
    torch.testing.assert_close(
        healths[0].smoothed_shares["c_fc"], healths[1].smoothed_shares["c_fc"], rtol=1e-4, atol=1e-5
    )
    a, b = healths[0].measure(), healths[1].measure()
    assert a.layer_row_norm_cv["c_fc"] == pytest.approx(b.layer_row_norm_cv["c_fc"], rel=1e-5)
    assert a.layer_act_dead == pytest.approx(b.layer_act_dead)
    torch.testing.assert_close(
        healths[0].leverage(optimizers[0])["c_fc"], healths[1].leverage(optimizers[1])["c_fc"], rtol=1e-4, atol=1e-4
    )


def test_attach_unwraps_wrapper_optimizers():
    class Wrapper:  # the shape of accelerate's AcceleratedOptimizer: no step hooks, the optimizer in .optimizer
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

    from models import GPT2MLP

    model = GPT2MLP(conv1d=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    health = NeuronHealth(model).attach(Wrapper(Wrapper(optimizer)))
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    assert health.step == 1 and "c_fc" in health.smoothed_shares
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        NeuronHealth(model).attach(object())
