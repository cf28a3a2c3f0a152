"""Neuron health in Lightning (``pip install aurora-opt[lightning]``).

    trainer = pl.Trainer(..., callbacks=[NeuronHealthCallback()])

Built on ``pytorch_lightning``; where only the unified ``lightning`` package is installed, on
``lightning.pytorch``. A callback of one is not accepted by the other's Trainer: the class here
derives from the one that imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

try:
    from pytorch_lightning import Callback
except ImportError:
    try:
        from lightning.pytorch import Callback
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "aurora_opt.integrations.lightning needs pytorch-lightning (pip install 'aurora-opt[lightning]') "
            f"or lightning; importing it failed: {error}"
        ) from error

from ..diagnostics import NeuronHealth
from . import HealthMetrics


class NeuronHealthCallback(Callback):
    """Track the LightningModule's MLP input projections with :class:`~aurora_opt.diagnostics.NeuronHealth`
    and send its metrics (see :class:`~aurora_opt.integrations.HealthMetrics`) to every logger of
    the Trainer (``trainer.loggers``: TensorBoard, W&B, CSV, ...) every ``log_every_n_steps``
    optimizer steps (default: the Trainer's ``log_every_n_steps``).

    ``modules``/``every``: as for ``NeuronHealth``. Tracking starts at ``on_fit_start`` on
    ``trainer.optimizers``; the object tracking it is ``self.health``; the last metrics sent are
    ``self.last_metrics``.
    """

    def __init__(
        self,
        modules: Iterable[str] | None = None,
        *,
        every: int = 1,
        log_every_n_steps: int | None = None,
        prefix: str = "neuron_health/",
    ) -> None:
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 1):
            raise ValueError(f"invalid log_every_n_steps: {log_every_n_steps!r} (expected an integer ≥ 1 or None)")
        self.modules = None if modules is None else list(modules)
        self.every = every
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix
        self.health: NeuronHealth | None = None
        self.metrics: HealthMetrics | None = None
        self.last_metrics: dict[str, float] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.health is not None:
            self.health.detach()
        self.health = NeuronHealth(pl_module, self.modules, every=self.every).attach(*trainer.optimizers)
        self.metrics = HealthMetrics(self.health, self.prefix)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        interval = self.log_every_n_steps or trainer.log_every_n_steps
        if self.metrics is None or not interval or self.health.step == self.metrics.last_step:
            return  # no optimizer step since the last log (gradient accumulation)
        if trainer.global_step % interval:
            return
        self.last_metrics = self.metrics()
        for logger in trainer.loggers:
            logger.log_metrics(self.last_metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.health is not None:
            self.health.detach()


__all__ = ["NeuronHealthCallback"]
