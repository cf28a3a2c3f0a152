"""Split a model's parameters between a spectral rule and AdamW."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(
    model: nn.Module,
    *,
    adamw_lr: float | None = None,
    adamw_betas: tuple[float, float] | None = None,
    adamw_weight_decay: float | None = None,
    names: bool = True,
) -> list[dict[str, Any]]:
    """Return ``[spectral group, adamw group]`` for ``model`` (empty groups are left out).

    Hidden weight matrices (2-D and up: Linear, 3-D stacks, conv kernels) go to the spectral rule;
    embeddings (``nn.Embedding``/``nn.EmbeddingBag`` weights), the output head (a Linear whose weight
    is shared with an embedding, or the last Linear of the model whose output is the widest, e.g.
    ``lm_head``) and every 1-D parameter (norms, biases, gains) go to AdamW. Tied weights appear
    once. The AdamW settings given here are written into its group; left out, the optimizer's
    ``adamw_*`` defaults apply. With ``names`` the groups carry ``"param_names"``, so errors name
    the parameter.
    """
    embedding_weights = {
        id(module.weight) for module in model.modules() if isinstance(module, (nn.Embedding, nn.EmbeddingBag))
    }
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    head_ids = set()
    if linears:
        _, last = linears[-1]
        widest = max(module.out_features for _, module in linears)
        if last.out_features == widest and last.out_features > last.in_features:
            head_ids.add(id(last.weight))
    head_ids |= {id(module.weight) for _, module in linears if id(module.weight) in embedding_weights}

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
