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
    The model's defaults are :class:`GPTConfig`'s; these defaults are also the command line's.
    ``checkpoint_every`` applies only when :func:`train` is given a checkpoint directory.
    ``options`` maps an aurora-opt optimizer's name to more keyword arguments of its constructor
    (numbers, bools, None or strings, e.g. ``{"aurora": {"balance_steps": 1}}``); they apply whenever
    that optimizer runs. An option named ``*_dtype`` takes a dtype's name (``"bfloat16"``, see
    :data:`OPTION_DTYPES`), so that the options stay JSON.
    """

    optimizer: str = "aurora"
    lr: float | None = None
    weight_decay: float | None = None
    adamw_lr: float = 3e-3
    steps: int = 300
    batch_size: int = 16
    seq_len: int = GPTConfig.seq_len
    n_layer: int = GPTConfig.n_layer
    n_head: int = GPTConfig.n_head
    d_model: int = GPTConfig.d_model
    mlp_expansion: int = GPTConfig.mlp_expansion
    mlp: str = GPTConfig.mlp
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    diag_every: int = 1
    leverage_steps: tuple[int, ...] = ()
    checkpoint_every: int = 100
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

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
        for name, kwargs in self.options.items():
            _check_options(name, kwargs)

    def model_config(self, vocab_size: int = 256) -> GPTConfig:
        return GPTConfig(
            vocab_size=vocab_size,
            seq_len=self.seq_len,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            mlp_expansion=self.mlp_expansion,
            mlp=self.mlp,
        )

    def resolved_hparams(self) -> tuple[float, float]:
        """(lr, weight_decay) actually used: the given values or the optimizer's defaults."""
        if self.optimizer in TORCH_DEFAULTS:
            lr, wd = TORCH_DEFAULTS[self.optimizer]
        else:
            signature = inspect.signature(OPTIMIZERS[self.optimizer].__init__)
            lr, wd = signature.parameters["lr"].default, signature.parameters["weight_decay"].default
        return (lr if self.lr is None else self.lr, wd if self.weight_decay is None else self.weight_decay)


#: the dtype names an ``*_dtype`` option may take (with or without a ``torch.`` prefix)
OPTION_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def optimizer_kwargs(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The constructor keyword arguments of an optimizer's ``options``: an ``*_dtype`` option's name
    of a dtype becomes that dtype; ValueError for a name not in :data:`OPTION_DTYPES`."""
    kwargs = dict(options)
    for key, value in options.items():
        if key.endswith("_dtype") and isinstance(value, str):
            dtype = OPTION_DTYPES.get(value.removeprefix("torch."))
            if dtype is None:
                raise ValueError(
                    f"invalid option {name}.{key}: {value!r} (expected one of {', '.join(OPTION_DTYPES)} or None)"
                )
            kwargs[key] = dtype
    return kwargs


def _check_options(name: str, kwargs: Any) -> None:
    """Raise ValueError unless ``kwargs`` are valid, JSON-representable keyword arguments of the
    aurora-opt optimizer ``name`` (checked by building it on one small matrix)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"invalid options: {name!r} is not an aurora-opt optimizer (one of {', '.join(OPTIMIZERS)})")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ValueError(f"invalid options for {name}: {kwargs!r} (expected a dict of keyword arguments)")
    for key, value in kwargs.items():
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"invalid option {name}.{key}: {value!r} (expected a number, bool, None or string)")
    try:
        OPTIMIZERS[name]([torch.nn.Parameter(torch.zeros(4, 2))], **optimizer_kwargs(name, kwargs))
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid options for {name}: {err}") from None


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
        return {
            "optimizer": self.optimizer,
            "mlp_expansion": self.mlp_expansion,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "history": self.history,
            "final": self.final,
        }

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
    if config.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)]
    if config.optimizer == "torch_muon":
        matrices = [p for g in groups if g.get("algorithm") != "adamw" for p in g["params"]]
        others = [p for g in groups if g.get("algorithm") == "adamw" for p in g["params"]]
        return [
            torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay),
            torch.optim.AdamW(others, lr=config.adamw_lr, betas=(0.9, 0.95), weight_decay=0.0),
        ]
    options = optimizer_kwargs(config.optimizer, config.options.get(config.optimizer, {}))
    return [OPTIMIZERS[config.optimizer](groups, lr=lr, weight_decay=weight_decay, adamw_lr=config.adamw_lr, **options)]


def settings_dict(config: TrainConfig) -> dict[str, Any]:
    """``config`` as a dict, without ``options`` where there are none (as written before it existed,
    so that those checkpoints and settings still match)."""
    fields = dataclasses.asdict(config)
    if not fields["options"]:
        del fields["options"]
    return fields


def _config_key(config: TrainConfig) -> dict[str, Any]:
    """The fields a checkpoint must agree on to be resumed (all but bookkeeping intervals)."""
    skip = {"checkpoint_every", "device"}
    return {k: v for k, v in settings_dict(config).items() if k not in skip}


def autocast_for(device: torch.device) -> Callable[[], Any]:
    """fp32 on CPU (no autocast), bf16 autocast elsewhere."""
    if device.type == "cpu":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


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


class Training:
    """One run's model, optimizers, diagnostics and measurements, advanced one step at a time."""

    def __init__(self, config: TrainConfig, corpus: Corpus, checkpoint_dir: Path | None) -> None:
        self.config, self.corpus, self.checkpoint_dir = config, corpus, checkpoint_dir
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # starved rows fill momentum with denormals: 10x slower without
        self.autocast = autocast_for(self.device)
        torch.manual_seed(config.seed)
        self.model = GPT(config.model_config(corpus.vocab_size)).to(self.device)
        self.optimizers = build_optimizers(config, self.model)
        self.health = NeuronHealth(self.model, every=config.diag_every).attach(*self.optimizers)
        lr, weight_decay = config.resolved_hparams()
        self.result = RunResult(
            config.optimizer, config.mlp_expansion, lr, weight_decay, config.seed, num_params=self.model.num_params()
        )
        self.interval = {"loss_sum": 0.0, "count": 0}

    def restore(self, warn: Callable[[str], None]) -> None:
        """Continue from the newest good checkpoint in ``checkpoint_dir``, if there is one."""
        if self.checkpoint_dir is None:
            return
        loaded = load_latest_checkpoint(self.checkpoint_dir, warn)
        if loaded is None:
            return
        payload, path = loaded
        if payload["config"] != _config_key(self.config):
            raise ValueError(
                f"{path} was written by a run with different settings; "
                "use a new --out directory or the original settings"
            )
        self.model.load_state_dict(payload["model"])
        for optimizer, state in zip(self.optimizers, payload["optimizers"]):
            optimizer.load_state_dict(state)
        self.health.load_state_dict(payload["health"])
        self.result = RunResult(**payload["result"])
        self.interval = payload["interval"]

    def save(self) -> None:
        if self.checkpoint_dir is None:
            return
        save_checkpoint(
            {
                "config": _config_key(self.config),
                "model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "health": self.health.state_dict(),
                "result": self.result.as_dict(),
                "interval": dict(self.interval),
            },
            self.checkpoint_dir,
            self.result.step,
        )

    def step(self, step: int) -> float:
        """One optimizer step on the batch of ``step``; returns the training loss."""
        config = self.config
        start = time.perf_counter()
        x, y = get_batch(self.corpus.train, config.batch_size, config.seq_len, batch_generator(config.seed, step))
        with self.autocast():
            loss = self.model(x.to(self.device), y.to(self.device))
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        self.result.train_seconds += time.perf_counter() - start
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{config.optimizer}: training loss became {loss_value} at step {step}")
        self.interval["loss_sum"] += loss_value
        self.interval["count"] += 1
        return loss_value

    def record(self, step: int) -> dict[str, Any]:
        """Append the interval's mean training loss, neuron health and (when due) validation loss."""
        config = self.config
        is_eval = step % config.eval_every == 0 or step == config.steps
        snapshot = self.health.measure()
        record = {
            "step": step,
            "train_loss": self.interval["loss_sum"] / self.interval["count"],
            "val_loss": evaluate(self.model, self.corpus.val, config, self.autocast) if is_eval else None,
            "starved_fraction": snapshot.starved_fraction,
            "act_dead_fraction": snapshot.act_dead_fraction,
        }
        self.result.history.append(record)
        self.result.layers.append(
            {
                "step": step,
                "starved": snapshot.layer_starved,
                "act_dead": snapshot.layer_act_dead,
                "row_norm_cv": snapshot.layer_row_norm_cv,
            }
        )
        self.interval = {"loss_sum": 0.0, "count": 0}
        return record

    def record_leverage(self, step: int) -> None:
        self.result.leverage[str(step)] = {
            name: leverage_histogram(values) for name, values in self.health.leverage(*self.optimizers).items()
        }

    def finish(self) -> RunResult:
        last = self.result.history[-1]
        self.result.final = {
            "val_loss": last["val_loss"],
            "starved_fraction": last["starved_fraction"],
            "act_dead_fraction": last["act_dead_fraction"],
            "sec_per_step": self.result.train_seconds / max(self.result.step, 1),
        }
        self.result.status = "complete"
        self.save()
        self.health.detach()
        return self.result


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
    run = Training(config, corpus, checkpoint_dir)
    if resume:
        run.restore(warn)
    run.model.train()
    run.result.status = "running"
    while run.result.step < config.steps:
        step = run.result.step + 1
        loss = run.step(step)
        if step in config.leverage_steps:
            run.record_leverage(step)
        if step % config.log_every == 0 or step == config.steps:
            record = run.record(step)
        else:
            record = {"train_loss": loss}
        if progress is not None:
            progress(step, record)
        run.result.step = step
        run.result.diagnostic_seconds = run.health.seconds
        if stop is not None and stop.signal is not None:
            run.result.status = "interrupted"
            run.save()
            return run.result
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            run.save()
    return run.finish()
