"""The AdamW rule for the parameters a spectral rule should not train (embeddings, head, 1-D)."""

from __future__ import annotations

import torch
from torch import Tensor


def adamw_update_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step in place (Loshchilov & Hutter; decoupled decay p ← p·(1 − lr·wd)).

    ``step`` is a 0-d tensor counting the steps taken, incremented here; bias corrections use it.
    """
    beta1, beta2 = betas
    step += 1
    t = step.item()
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
    param.mul_(1 - lr * weight_decay)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
