"""Train the small GPT with one optimizer while recording neuron health; checkpoint and resume."""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer

from ..diagnostics import NeuronHealth, leverage_histogram
from ..registry import OPTIMIZERS
from .checkpoint import load_latest_checkpoint, save_checkpoint
from .data import Corpus, batch_generator, get_batch
from .gpt import GPT, GPTConfig

#: optimizers from torch itself that the trainer can also run, for reference
TORCH_OPTIMIZERS = ("adamw", "torch_muon")
#: default lr / weight decay of the torch reference optimizers (torch.optim.Muon's own defaults; AdamW tuned
#: for this small model)
TORCH_DEFAULTS = {"adamw": (3e-3, 0.0), "torch_muon": (0.02, 0.0)}


def optimizer_names() -> tuple[str, ...]:
    return (*OPTIMIZERS, *TORCH_OPTIMIZERS)


@dataclass
class TrainConfig:
    """One training run. ``lr``/``weight_decay`` ``None`` take the optimizer's own default.

    lr is in the optimizer's units (spectral norm per update before shape scaling, for the spectral
    rules); ``adamw_lr`` trains the embeddings, head and norm gains, the same for every optimizer.
    Batches depend only on (seed, step), so every optimizer sees the same data in the same order.
    """

    optimizer: str = "aurora"
    lr: float | None = None
    weight_decay: float | None = None
    adamw_lr: float = 3e-3
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    mlp_expansion: int = 4
    mlp: str = "swiglu"
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    diag_every: int = 1
    leverage_steps: tuple[int, ...] = ()
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in optimizer_names():
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(optimizer_names())}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_batches", "diag_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid {name}: {value!r} (expected a positive integer)")
        if self.checkpoint_every < 0:
            raise ValueError(f"invalid checkpoint_every: {self.checkpoint_every!r} (expected ≥ 0; 0 = never)")
        self.leverage_steps = tuple(int(s) for s in self.leverage_steps)
        self.model_config()  # validates the model shape

    def model_config(self, vocab_size: int = 256) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, seq_len=self.seq_len, n_layer=self.n_layer, n_head=self.n_head,
                         d_model=self.d_model, mlp_expansion=self.mlp_expansion, mlp=self.mlp)

    def resolved_hparams(self) -> tuple[float, float]:
        """(lr, weight_decay) actually used: the given values or the optimizer's defaults."""
        if self.optimizer in TORCH_DEFAULTS:
            lr, wd = TORCH_DEFAULTS[self.optimizer]
        else:
            signature = inspect.signature(OPTIMIZERS[self.optimizer].__init__)
            lr, wd = signature.parameters["lr"].default, signature.parameters["weight_decay"].default
        return (lr if self.lr is None else self.lr, wd if self.weight_decay is None else self.weight_decay)


@dataclass
class RunResult:
    """What one run measured. ``history``/``final`` follow results.json's documented shape; the rest
    (per-layer series, leverage histograms) goes to diagnostics.json."""

    optimizer: str
    mlp_expansion: int
    lr: float
    weight_decay: float
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    leverage: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str = "running"
    step: int = 0
    train_seconds: float = 0.0
    diagnostic_seconds: float = 0.0
    num_params: int = 0

    def results_entry(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "mlp_expansion": self.mlp_expansion, "lr": self.lr,
                "weight_decay": self.weight_decay, "seed": self.seed, "history": self.history, "final": self.final}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StopRequest:
    """Set by a signal handler; the loop checkpoints and returns at the next step boundary."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any = None) -> None:
        self.signal = signum


def build_optimizers(config: TrainConfig, model: GPT) -> list[Optimizer]:
    """The optimizer(s) for ``model``; torch.optim.Muon takes only matrices, so it comes with an AdamW."""
    lr, weight_decay = config.resolved_hparams()
    groups = model.param_groups()
    adamw_params = groups[1]["params"]
    if config.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)]
    if config.optimizer == "torch_muon":
        return [
            torch.optim.Muon(groups[0]["params"], lr=lr, weight_decay=weight_decay),
            torch.optim.AdamW(adamw_params, lr=config.adamw_lr, betas=(0.9, 0.95), weight_decay=0.0),
        ]
    return [OPTIMIZERS[config.optimizer](groups, lr=lr, weight_decay=weight_decay, adamw_lr=config.adamw_lr)]


def _config_key(config: TrainConfig) -> dict[str, Any]:
    """The fields a checkpoint must agree on to be resumed (all but bookkeeping intervals)."""
    skip = {"checkpoint_every", "device"}
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


@torch.no_grad()
def evaluate(model: GPT, tokens: torch.Tensor, config: TrainConfig, autocast: Any) -> float:
    """Mean validation loss (nats/token) over ``eval_batches`` fixed batches."""
    model.eval()
    total = 0.0
    for index in range(config.eval_batches):
        x, y = get_batch(tokens, config.batch_size, config.seq_len, batch_generator(config.seed, index, stream=1))
        with autocast():
            total += float(model(x.to(config.device), y.to(config.device)))
    model.train()
    return total / config.eval_batches


def train(
    config: TrainConfig,
    corpus: Corpus,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    stop: StopRequest | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> RunResult:
    """Train for ``config.steps`` steps and return what was measured.

    With ``checkpoint_dir``, saves every ``checkpoint_every`` steps, at the end, and when ``stop`` is
    set (then returns early with ``status == "interrupted"``); with ``resume``, continues from the
    newest good checkpoint there. On CPU the continued run equals an uninterrupted one bit for bit.
    """
    device = torch.device(config.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # starved rows fill momentum with denormals: 10x slower without
        autocast: Callable[[], Any] = nullcontext
    else:
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    torch.manual_seed(config.seed)
    model = GPT(config.model_config(corpus.vocab_size)).to(device)
    optimizers = build_optimizers(config, model)
    health = NeuronHealth(model, every=config.diag_every).attach(*optimizers)
    lr, weight_decay = config.resolved_hparams()
    result = RunResult(config.optimizer, config.mlp_expansion, lr, weight_decay, config.seed,
                       num_params=model.num_params())
    interval = {"loss_sum": 0.0, "count": 0}

    if resume and checkpoint_dir is not None:
        loaded = load_latest_checkpoint(checkpoint_dir, warn)
        if loaded is not None:
            payload, path = loaded
            if payload["config"] != _config_key(config):
                raise ValueError(f"{path} was written by a run with different settings; "
                                 "use a new --out directory or the original settings")
            model.load_state_dict(payload["model"])
            for optimizer, state in zip(optimizers, payload["optimizers"]):
                optimizer.load_state_dict(state)
            health.load_state_dict(payload["health"])
            result = RunResult(**payload["result"])
            interval = payload["interval"]

    def save() -> None:
        if checkpoint_dir is None:
            return
        save_checkpoint({
            "config": _config_key(config),
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "health": health.state_dict(),
            "result": result.as_dict(),
            "interval": dict(interval),
        }, checkpoint_dir, result.step)

    model.train()
    result.status = "running"
    while result.step < config.steps:
        step = result.step + 1
        start = time.perf_counter()
        x, y = get_batch(corpus.train, config.batch_size, config.seq_len, batch_generator(config.seed, step))
        with autocast():
            loss = model(x.to(device), y.to(device))
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        result.train_seconds += time.perf_counter() - start
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{config.optimizer}: training loss became {loss_value} at step {step}")
        interval["loss_sum"] += loss_value
        interval["count"] += 1
        if step in config.leverage_steps:
            result.leverage[str(step)] = {
                name: leverage_histogram(values) for name, values in health.leverage(*optimizers).items()
            }
        if step % config.log_every == 0 or step == config.steps:
            is_eval = step % config.eval_every == 0 or step == config.steps
            snapshot = health.measure()
            record = {
                "step": step,
                "train_loss": interval["loss_sum"] / interval["count"],
                "val_loss": evaluate(model, corpus.val, config, autocast) if is_eval else None,
                "starved_fraction": snapshot.starved_fraction,
                "act_dead_fraction": snapshot.act_dead_fraction,
            }
            result.history.append(record)
            result.layers.append({"step": step, "starved": snapshot.layer_starved, "act_dead": snapshot.layer_act_dead,
                                  "row_norm_cv": snapshot.layer_row_norm_cv})
            interval = {"loss_sum": 0.0, "count": 0}
            if progress is not None:
                progress(step, record)
        elif progress is not None:
            progress(step, {"train_loss": loss_value})
        result.step = step
        result.diagnostic_seconds = health.seconds
        if stop is not None and stop.signal is not None:
            result.status = "interrupted"
            save()
            return result
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            save()

    last = result.history[-1]
    result.final = {
        "val_loss": last["val_loss"],
        "starved_fraction": last["starved_fraction"],
        "act_dead_fraction": last["act_dead_fraction"],
        "sec_per_step": result.train_seconds / max(result.step, 1),
    }
    result.status = "complete"
    save()
    health.detach()
    return result
