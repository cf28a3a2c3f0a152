"""ResNet-18 (torchvision or timm) trained with Aurora on the hidden convolutions.

    pip install torchvision      # or: pip install timm
    python examples/resnet_vision.py --library torchvision --steps 20

``param_groups`` sends the stem convolution (``conv1``) and the classifier (``fc``; a timm model's
``get_classifier()``) to AdamW with the batch norms, and every other convolution to the spectral
rule (4-D kernels as (out, in·kh·kw) matrices). The data are random images of 10 fixed class
prototypes plus noise, so nothing is downloaded and the loss must fall.
"""

from __future__ import annotations

import argparse
import importlib

import torch
from torch import nn

from aurora_opt import get_optimizer, param_groups


def resnet18(library: str, classes: int = 10) -> nn.Module:
    if library == "torchvision":
        return importlib.import_module("torchvision").models.resnet18(num_classes=classes)
    return importlib.import_module("timm").create_model("resnet18", num_classes=classes)


def train(
    model: nn.Module, *, steps: int, optimizer: str = "aurora", batch_size: int = 16, size: int = 32
) -> list[float]:
    """Train on noisy copies of 10 random prototype images; returns the loss of every step."""
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, 3, size, size, generator=g)
    opt = get_optimizer(optimizer)(param_groups(model), lr=0.02, adamw_lr=1e-3)
    losses = []
    for _ in range(steps):
        labels = torch.randint(0, 10, (batch_size,), generator=g)
        images = prototypes[labels] + 0.5 * torch.randn(batch_size, 3, size, size, generator=g)
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", choices=["torchvision", "timm"], default="torchvision")
    parser.add_argument("--optimizer", default="aurora")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    losses = train(resnet18(args.library), steps=args.steps, optimizer=args.optimizer)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} after {args.steps} steps")


if __name__ == "__main__":
    main()
