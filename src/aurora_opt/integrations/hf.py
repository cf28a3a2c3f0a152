"""Neuron health in the Hugging Face ``Trainer`` (``pip install aurora-opt[hf]``).

trainer = Trainer(model, args, ..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, "aurora"))
trainer.add_callback(NeuronHealthCallback(trainer))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"aurora_opt.integrations.hf needs transformers (pip install 'aurora-opt[hf]'); importing it failed: {error}"
    ) from error

from ..diagnostics import NeuronHealth
from . import HealthMetrics, optimizer_cls_and_kwargs


class NeuronHealthCallback(TrainerCallback):
    """Track the model's MLP input projections with :class:`~aurora_opt.diagnostics.NeuronHealth`
    and log its metrics (see :class:`~aurora_opt.integrations.HealthMetrics`) with
    ``trainer.log`` at every logging step, so they reach ``log_history`` and every ``report_to``
    integration (TensorBoard, W&B, ...).

    ``trainer``: the Trainer it is added to (``trainer.add_callback(NeuronHealthCallback(trainer))``);
    ``modules``/``every``: as for ``NeuronHealth``. Tracking starts at ``on_train_begin`` on the
    Trainer's optimizer (accelerate's wrapper is unwrapped) and stops at ``on_train_end``; the
    object tracking it is ``self.health``.
    """

    def __init__(
        self, trainer: Any, modules: Iterable[str] | None = None, *, every: int = 1, prefix: str = "neuron_health/"
    ) -> None:
        self.trainer = trainer
        self.modules = None if modules is None else list(modules)
        self.every = every
        self.prefix = prefix
        self.health: NeuronHealth | None = None
        self.metrics: HealthMetrics | None = None

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if self.health is not None:
            self.health.detach()
        self.health = NeuronHealth(model, self.modules, every=self.every).attach(optimizer)
        self.metrics = HealthMetrics(self.health, self.prefix)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # DefaultFlowCallback, which runs first, has decided whether this step logs
        if control.should_log and self.metrics is not None:
            self.trainer.log(self.metrics())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.health is not None:
            self.health.detach()


__all__ = ["NeuronHealthCallback", "optimizer_cls_and_kwargs"]
