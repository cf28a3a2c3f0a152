"""aurora_opt.param_groups: which parameters go to the spectral rule and which to AdamW."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aurora_opt
from models import Conv1D, TimmResNet, TinyResNet


class SmallLM(nn.Module):
    def __init__(self, vocab=50, d=16, tie=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.RMSNorm(d)
        self.gate = nn.Linear(d, 4 * d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=True)
        self.conv = nn.Conv1d(d, d, 3)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight


def names(groups, algorithm):
    for g in groups:
        if g.get("algorithm", "spectral") == algorithm:
            return set(g["param_names"])
    return set()


@pytest.mark.parametrize("tie", [True, False])
def test_split(tie):
    groups = aurora_opt.param_groups(SmallLM(tie=tie))
    assert names(groups, "spectral") == {"gate.weight", "up.weight", "down.weight", "conv.weight"}
    expected = {"embed.weight", "norm.weight", "down.bias", "conv.bias"} | (set() if tie else {"lm_head.weight"})
    assert names(groups, "adamw") == expected
    # every parameter exactly once, tied ones included
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(SmallLM(tie=tie).parameters()))


def test_groups_drive_an_optimizer_and_errors_name_parameters():
    model = SmallLM()
    opt = aurora_opt.Aurora(aurora_opt.param_groups(model, adamw_lr=1e-3, adamw_betas=(0.9, 0.99)))
    adamw_group = next(g for g in opt.param_groups if g["algorithm"] == "adamw")
    assert adamw_group["lr"] == 1e-3 and adamw_group["betas"] == (0.9, 0.99)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.up.weight.grad[0, 0] = float("nan")
    with pytest.raises(aurora_opt.NonFiniteGradError, match=r"'up.weight' of shape \(64, 16\)"):
        opt.step()


def test_hidden_width_equal_to_vocabulary_stays_spectral():
    # byte-level: 256 symbols and a 256-wide MLP projection; only names and ties pick the head
    model = SmallLM(vocab=256, d=64)
    assert {"gate.weight", "up.weight"} <= names(aurora_opt.param_groups(model), "spectral")
    untied = SmallLM(vocab=256, d=64, tie=False)
    assert "lm_head.weight" in names(aurora_opt.param_groups(untied), "adamw")
    assert "lm_head.weight" in names(aurora_opt.param_groups(untied, head_names=("lm_head",)), "adamw")


def test_frozen_parameters_are_left_out():
    model = SmallLM()
    model.gate.weight.requires_grad_(False)
    assert "gate.weight" not in names(aurora_opt.param_groups(model), "spectral")


def test_vision_classifier_and_stem_go_to_adamw():
    groups = aurora_opt.param_groups(TinyResNet())
    assert names(groups, "spectral") == {"layer1.0.weight"}
    assert names(groups, "adamw") == {
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "layer1.1.weight",
        "layer1.1.bias",
        "fc.weight",
        "fc.bias",
    }
    kept = aurora_opt.param_groups(TinyResNet(), stem_to_adamw=False)
    assert names(kept, "spectral") == {"conv1.weight", "layer1.0.weight"}
    assert "head_fc.weight" in names(aurora_opt.param_groups(TimmResNet()), "adamw")


def test_fc_below_the_top_level_is_a_hidden_layer():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 32)
            self.proj = nn.Linear(32, 8)

    model = nn.Module()
    model.embed = nn.Embedding(20, 8)
    model.mlp = Block()
    model.lm_head = nn.Linear(8, 20)
    assert names(aurora_opt.param_groups(model), "spectral") == {"mlp.fc.weight", "mlp.proj.weight"}


def test_a_model_without_a_recognized_head_warns():
    mlp = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 3))
    with pytest.warns(UserWarning, match="head_names"):
        groups = aurora_opt.param_groups(mlp)
    assert names(groups, "spectral") == {"0.weight", "2.weight"}
    assert names(aurora_opt.param_groups(mlp, head_names=("2",)), "spectral") == {"0.weight"}


def test_conv1d_weights_get_the_in_out_layout():
    model = SmallLM()
    model.c_fc = Conv1D(64, 16)
    groups = aurora_opt.param_groups(model)
    in_out = [g for g in groups if g.get("weight_layout") == "in_out"]
    assert len(in_out) == 1 and in_out[0]["param_names"] == ["c_fc.weight"]
    assert "c_fc.weight" not in names(groups, "spectral") and "c_fc.bias" in names(groups, "adamw")


def test_plain_dict_add_param_group_after_named_groups():
    model = SmallLM()
    opt = aurora_opt.Muon(aurora_opt.param_groups(model))
    extra = nn.Parameter(torch.randn(8, 4))
    opt.add_param_group({"params": [extra]})
    opt.add_param_group({"params": nn.Parameter(torch.randn(3)), "algorithm": "adamw"})
    assert opt.param_groups[-2]["param_names"] == ["param_groups[2][0]"]
    extra.grad = torch.ones_like(extra)
    extra.grad[0, 0] = float("nan")
    with pytest.raises(aurora_opt.NonFiniteGradError, match=r"'param_groups\[2\]\[0\]'"):
        opt.step()


def test_one_cycle_lr_with_per_group_max_lr():
    # one max_lr per group (spectral, AdamW): each side peaks at its own lr; momentum cycles on the
    # spectral side only (the optimizer's defaults have "momentum", not "betas"), AdamW betas stay
    model = SmallLM(tie=False)
    opt = aurora_opt.Muon(aurora_opt.param_groups(model))
    assert [g["algorithm"] for g in opt.param_groups] == ["muon", "adamw"]
    max_lr = [0.02, 3e-3]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=10, pct_start=0.3)
    lrs, momenta = [], []  # after k scheduler steps
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        momenta.append(opt.param_groups[0]["momentum"])
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        scheduler.step()
    peak = round(0.3 * 10) - 1  # OneCycleLR reaches max_lr after pct_start·total_steps − 1 steps
    assert lrs[peak] == pytest.approx(max_lr)
    assert max(lr[1] for lr in lrs) == pytest.approx(3e-3)  # a single max_lr=0.02 would drive AdamW to 0.02
    assert lrs[0] == pytest.approx([0.02 / 25, 3e-3 / 25])  # div_factor 25, per group
    assert min(momenta) < max(momenta) <= 0.95
    assert opt.param_groups[1]["betas"] == (0.9, 0.95)
