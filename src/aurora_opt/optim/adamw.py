"""The AdamW rule for the parameters a spectral rule should not train (embeddings, head, 1-D).

Written out rather than delegated to ``torch.optim.AdamW``'s functional form because a skipped step
(a non-finite gradient under ``on_nonfinite_grad="skip"``) must leave parameters and state exactly as
they were without a host synchronization: every update below is masked by a device flag.
"""

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
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    apply: Tensor | None = None,
) -> None:
    """One AdamW step in place (Loshchilov & Hutter; decoupled decay p ← p·(1 − lr·wd)).

    ``step`` is a 0-d tensor counting the steps taken, incremented here; bias corrections are
    computed from it on its device (no host synchronization). ``apply``: a 0-d bool tensor; where it
    is False nothing changes (``grad`` may then hold NaN or inf).
    """
    beta1, beta2 = betas
    if apply is None:
        step += 1
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        decay = 1 - lr * weight_decay
    else:
        grad = torch.where(apply, grad, 0)
        step += apply
        exp_avg.lerp_(grad, torch.where(apply, 1 - beta1, 0.0).to(exp_avg.dtype))
        exp_avg_sq.mul_(torch.where(apply, beta2, 1.0).to(exp_avg_sq.dtype)).addcmul_(grad, grad, value=1 - beta2)
        decay = torch.where(apply, 1 - lr * weight_decay, 1.0)
    # in float64: 1 − β^t loses digits in fp32 once β^t is close to 1
    bias_correction1 = 1 - torch.pow(beta1, step.double())
    bias_correction2 = 1 - torch.pow(beta2, step.double())
    denom = (exp_avg_sq / bias_correction2.to(exp_avg_sq.dtype)).sqrt_().add_(eps)
    step_size = lr / bias_correction1
    if apply is not None:
        step_size = torch.where(apply, step_size, 0.0)
    param.mul_(decay)
    param.addcmul_(exp_avg / denom, step_size.to(param.dtype), value=-1)
