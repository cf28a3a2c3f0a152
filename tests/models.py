"""Tiny stand-ins for third-party modules, so the logic that recognizes them is tested without the
libraries (torchvision, timm and transformers may not import)."""

from __future__ import annotations

import torch
from torch import nn


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D as GPT-2 defines it: weight (in, out), y = x·W + b."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class TinyResNet(nn.Module):
    """The layout of torchvision/timm ResNets: stem conv1, residual stages, pooled top-level fc."""

    def __init__(self, classes=10, timm_style=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, classes)
        if timm_style:
            self.head_fc = self.fc  # a classifier found only through get_classifier()
            del self.fc

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.layer1(x)).mean(dim=(2, 3))
        return (self.fc if hasattr(self, "fc") else self.head_fc)(x)


class TimmResNet(TinyResNet):
    def __init__(self):
        super().__init__(timm_style=True)

    def get_classifier(self):
        return self.head_fc


class GPT2MLP(nn.Module):
    """GPT-2's MLP block (c_fc → GELU → c_proj), in Conv1D or in nn.Linear form with the same weights."""

    def __init__(self, d=8, hidden=32, conv1d=True):
        super().__init__()
        if conv1d:
            self.c_fc, self.c_proj = Conv1D(hidden, d), Conv1D(d, hidden)
        else:
            self.c_fc, self.c_proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.c_proj(nn.functional.gelu(self.c_fc(x)))

    def linear_twin(self):
        twin = GPT2MLP(self.c_proj.weight.size(1), self.c_fc.weight.size(1), conv1d=False)
        with torch.no_grad():
            for mine, theirs in ((self.c_fc, twin.c_fc), (self.c_proj, twin.c_proj)):
                theirs.weight.copy_(mine.weight.mT)
                theirs.bias.copy_(mine.bias)
        return twin
