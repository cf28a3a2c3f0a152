"""aurora_opt.param_groups: which parameters go to the spectral rule and which to AdamW."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aurora_opt


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
