"""Split a model's parameters between a spectral rule and AdamW."""

from __future__ import annotations

from typing import Any

from torch import nn


HEAD_NAMES = ("lm_head", "head", "output", "classifier")


def param_groups(
    model: nn.Module,
    *,
    adamw_lr: float | None = None,
    adamw_betas: tuple[float, float] | None = None,
    adamw_weight_decay: float | None = None,
    head_names: tuple[str, ...] = HEAD_NAMES,
    names: bool = True,
) -> list[dict[str, Any]]:
    """Return ``[spectral group, adamw group]`` for ``model`` (empty groups are left out).

    Hidden weight matrices (2-D and up: Linear, 3-D stacks, conv kernels) go to the spectral rule.
    AdamW gets every 1-D parameter (norms, biases, gains), embeddings (``nn.Embedding``/
    ``nn.EmbeddingBag``) and the output head: a Linear whose weight is tied to an embedding or whose
    module name ends in one of ``head_names`` (pass your own for other names). Sizes are not used
    to guess: in a byte-level model a hidden width can equal the vocabulary size. Tied weights
    appear once. The AdamW settings given here are written into its
    group; left out, the optimizer's ``adamw_*`` defaults apply. With ``names`` the groups carry
    ``"param_names"``, so errors name the parameter.
    """
    embedding_weights = {
        id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
    }
    head_ids = {
        id(module.weight)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in head_names
    }

    spectral: dict[str, Any] = {"params": [], "param_names": []}
    adamw: dict[str, Any] = {"params": [], "param_names": [], "algorithm": "adamw"}
    for name, p in model.named_parameters():  # yields each shared tensor once
        if not p.requires_grad:
            continue
        is_adamw = p.dim() < 2 or id(p) in embedding_weights or id(p) in head_ids
        group = adamw if is_adamw else spectral
        group["params"].append(p)
        group["param_names"].append(name)
    for key, value in (("lr", adamw_lr), ("betas", adamw_betas), ("weight_decay", adamw_weight_decay)):
        if value is not None:
            adamw[key] = value
    groups = [g for g in (spectral, adamw) if g["params"]]
    if not names:
        for g in groups:
            del g["param_names"]
    return groups
