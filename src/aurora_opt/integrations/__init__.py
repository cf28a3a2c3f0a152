"""Glue for training frameworks; each framework's part imports it and lives behind an extra.

- :func:`optimizer_cls_and_kwargs`: any optimizer of this library for the Hugging Face ``Trainer``
  in one line (no framework import needed);
- :mod:`aurora_opt.integrations.hf` (``pip install aurora-opt[hf]``): ``NeuronHealthCallback`` for
  the ``Trainer``;
- :mod:`aurora_opt.integrations.lightning` (``pip install aurora-opt[lightning]``):
  ``NeuronHealthCallback`` for Lightning.

Both callbacks log, per tracked MLP input projection (:class:`~aurora_opt.diagnostics.NeuronHealth`),
the starved fraction, the inactive fraction and the row-norm spread, plus the totals and what the
tracking costs per optimizer step, through the framework's own logging (TensorBoard, W&B, ...).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from torch import nn

from ..diagnostics import NeuronHealth
from ..optim import SpectralOptimizer
from ..param_groups import param_groups
from ..registry import get_optimizer

#: keyword arguments of :func:`optimizer_cls_and_kwargs` that go to :func:`aurora_opt.param_groups`
PARAM_GROUP_OPTIONS = ("head_names", "stem_to_adamw", "adamw_lr", "adamw_betas", "adamw_weight_decay")


def optimizer_cls_and_kwargs(
    model: nn.Module, optimizer: str | type[SpectralOptimizer] = "aurora", **kwargs: Any
) -> tuple[type[SpectralOptimizer], dict[str, Any]]:
    """``(class, kwargs)`` for ``transformers.Trainer(optimizer_cls_and_kwargs=...)``.

    The Trainer builds its own decay/no-decay parameter groups, whose 1-D parameters a spectral
    rule rejects. The returned class is a subclass of ``optimizer`` (a name from
    ``aurora_opt.OPTIMIZERS`` or a class) that ignores those groups and splits ``model`` with
    :func:`aurora_opt.param_groups` instead (checking that both hold the same parameters).
    ``kwargs`` are the optimizer's (``lr``, ``weight_decay``, ``adamw_lr``, ...) plus the
    ``param_groups`` options ``head_names`` and ``stem_to_adamw``. Weight decay comes from these
    kwargs only: a nonzero ``TrainingArguments.weight_decay`` raises a warning and is not applied.

        trainer = Trainer(model, args, ..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, "aurora", lr=0.02))
    """
    base = get_optimizer(optimizer) if isinstance(optimizer, str) else optimizer
    group_options = {k: kwargs.pop(k) for k in PARAM_GROUP_OPTIONS if k in kwargs}

    def __init__(self, params: Any, **optimizer_kwargs: Any) -> None:
        given = list(params)
        given_groups = [g for g in given if isinstance(g, dict)]
        given_ids = {id(p) for g in given for p in (g["params"] if isinstance(g, dict) else [g])}
        if any(g.get("weight_decay", 0.0) for g in given_groups):
            warnings.warn(
                "the Trainer's weight_decay is not applied by the regrouped optimizer; pass weight_decay= "
                "(spectral side) and adamw_weight_decay= (AdamW side) in its kwargs",
                stacklevel=2,
            )
        groups = param_groups(model, **group_options)
        for group in groups:
            keep = [i for i, p in enumerate(group["params"]) if id(p) in given_ids]
            group["params"] = [group["params"][i] for i in keep]
            group["param_names"] = [group["param_names"][i] for i in keep]
        grouped = {id(p) for g in groups for p in g["params"]}
        if grouped != given_ids:
            raise ValueError(
                f"the optimizer was given {len(given_ids - grouped)} parameter(s) that are not trainable "
                "parameters of the model passed to optimizer_cls_and_kwargs"
            )
        base.__init__(self, [g for g in groups if g["params"]], **optimizer_kwargs)

    cls = type(base.__name__, (base,), {"__init__": __init__, "__doc__": base.__doc__, "__module__": base.__module__})
    return cls, kwargs


class HealthMetrics:
    """Turns a :class:`NeuronHealth` into flat ``{name: float}`` metrics, and times what it costs.

    Names: ``{prefix}starved_fraction``, ``{prefix}inactive_fraction``, ``{prefix}ms_per_step``
    (milliseconds of hooks and measurement per optimizer step since the last call) and per layer
    ``{prefix}{module}/starved_fraction``, ``…/row_norm_spread`` (projections) and
    ``{prefix}{mlp}/inactive_fraction`` (activation sites).
    """

    def __init__(self, health: NeuronHealth, prefix: str = "neuron_health/") -> None:
        self.health = health
        self.prefix = prefix
        self.measure_seconds = 0.0
        self._last_seconds = 0.0
        #: ``health.step`` (optimizer steps) at the last call
        self.last_step = 0

    def __call__(self) -> dict[str, float]:
        start = time.perf_counter()
        snap = self.health.measure()
        p = self.prefix
        metrics = {f"{p}starved_fraction": snap.starved_fraction, f"{p}inactive_fraction": snap.act_dead_fraction}
        metrics.update({f"{p}{k}/starved_fraction": v for k, v in snap.layer_starved.items()})
        metrics.update({f"{p}{k}/inactive_fraction": v for k, v in snap.layer_act_dead.items()})
        metrics.update({f"{p}{k}/row_norm_spread": v for k, v in snap.layer_row_norm_cv.items()})
        self.measure_seconds += time.perf_counter() - start
        total = self.health.seconds + self.measure_seconds
        steps = self.health.step - self.last_step
        if steps > 0:
            metrics[f"{p}ms_per_step"] = 1000 * (total - self._last_seconds) / steps
        self._last_seconds, self.last_step = total, self.health.step
        return metrics


__all__ = ["HealthMetrics", "optimizer_cls_and_kwargs"]
