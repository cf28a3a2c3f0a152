"""Split a model's parameters between a spectral rule and AdamW."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

HEAD_NAMES = ("lm_head", "head", "output", "classifier")
#: names that mark the output head only as a direct child of the model (torchvision/timm ResNet
#: ``fc``); deeper down, ``fc`` is a common name for an MLP layer
ROOT_HEAD_NAMES = ("fc",)
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_in_out_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a GPT-2 style ``Conv1D`` (transformers.pytorch_utils): a linear layer
    whose weight is stored (in, out), y = x·W + b. Recognized by its class name and ``nf`` (out)
    attribute, so transformers need not be imported."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 2
        and weight.size(1) == getattr(module, "nf", None)
    )


def stem_convolution(model: nn.Module) -> nn.Module | None:
    """The input layer when it is a convolution: the first module, in registration order, holding a
    weight of 2-D or more (embeddings aside), if that module is an ``nn.Conv1d/2d/3d``."""
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            return module if isinstance(module, CONVOLUTIONS) else None
    return None


def head_modules(model: nn.Module, head_names: tuple[str, ...]) -> list[nn.Module]:
    """Output heads: Linear (or GPT-2 Conv1D) layers named in ``head_names`` (last name component, any depth) or in
    ``ROOT_HEAD_NAMES`` (direct children), and the module a timm model's ``get_classifier()`` returns."""
    heads = [
        module
        for name, module in model.named_modules()
        if (isinstance(module, nn.Linear) or is_in_out_linear(module))
        and (name.rsplit(".", 1)[-1] in head_names or name in ROOT_HEAD_NAMES)
    ]
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        classifier = get_classifier()
        if isinstance(classifier, nn.Module):
            heads.append(classifier)
    return heads


def param_groups(
    model: nn.Module,
    *,
    adamw_lr: float | None = None,
    adamw_betas: tuple[float, float] | None = None,
    adamw_weight_decay: float | None = None,
    head_names: tuple[str, ...] = HEAD_NAMES,
    stem_to_adamw: bool = True,
    names: bool = True,
) -> list[dict[str, Any]]:
    """Return ``[spectral group, spectral (in, out) group, adamw group]`` for ``model`` (empty ones left out).

    Hidden weight matrices (2-D and up: Linear, 3-D stacks, conv kernels) go to the spectral rule;
    GPT-2 ``Conv1D`` weights, stored (in, out), go to a spectral group with
    ``"weight_layout": "in_out"``, so they are trained exactly as their ``nn.Linear`` twins.
    AdamW gets every 1-D parameter (norms, biases, gains), embeddings (``nn.Embedding``/
    ``nn.EmbeddingBag``), the output head and, with ``stem_to_adamw``, the stem convolution.

    The head is: a Linear whose weight is tied to an embedding; a Linear whose module name ends in
    one of ``head_names`` (pass your own for other names); a direct child Linear named ``fc``
    (torchvision/timm ResNet); and whatever a timm model's ``get_classifier()`` returns. When none
    is found a warning says so: a plain ``nn.Sequential`` has no names to find it by, so its
    output layer would stay spectral; pass ``head_names=("<index>",)``. Sizes are not used to
    guess: in a byte-level model a hidden width can equal the vocabulary size.

    The stem is the input layer when it is a convolution (the first module holding a weight
    matrix, in registration order: ResNet ``conv1``, ViT patch embedding); common Muon practice
    trains it with AdamW, like the embedding of a language model.

    Tied weights appear once. The AdamW settings given here are written into its group; left out,
    the optimizer's ``adamw_*`` defaults apply. With ``names`` the groups carry ``"param_names"``,
    so errors name the parameter.
    """
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    tied_head = any(isinstance(m, nn.Linear) and id(m.weight) in embedding_weights for m in model.modules())
    heads = head_modules(model, head_names)
    if not heads and not tied_head:
        warnings.warn(
            f"param_groups: no output head found (no Linear tied to an embedding or named one of "
            f"{head_names + ROOT_HEAD_NAMES}, no get_classifier()), so every weight matrix goes to the "
            "spectral rule; name the head with head_names=(...) (in an nn.Sequential, its index)",
            stacklevel=2,
        )
    stem = stem_convolution(model) if stem_to_adamw else None
    adamw_modules = heads if stem is None else [*heads, stem]
    adamw_ids = {id(p) for module in adamw_modules for p in module.parameters()} | embedding_weights
    in_out_ids = {id(m.weight) for m in model.modules() if is_in_out_linear(m)}

    spectral: dict[str, Any] = {"params": [], "param_names": []}
    in_out: dict[str, Any] = {"params": [], "param_names": [], "weight_layout": "in_out"}
    adamw: dict[str, Any] = {"params": [], "param_names": [], "algorithm": "adamw"}
    for name, p in model.named_parameters():  # yields each shared tensor once
        if not p.requires_grad:
            continue
        if p.dim() < 2 or id(p) in adamw_ids:
            group = adamw
        else:
            group = in_out if id(p) in in_out_ids else spectral
        group["params"].append(p)
        group["param_names"].append(name)
    for key, value in (("lr", adamw_lr), ("betas", adamw_betas), ("weight_decay", adamw_weight_decay)):
        if value is not None:
            adamw[key] = value
    groups = [g for g in (spectral, in_out, adamw) if g["params"]]
    if not names:
        for g in groups:
            del g["param_names"]
    return groups
