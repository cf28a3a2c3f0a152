"""Neuron-health diagnostics: which rows of the tall MLP input projections an optimizer starves.

Definitions (for a tall weight W [m, n], m hidden units, and the update ΔW an optimizer step applied):

- update share of row i: share_i = ‖ΔW_i‖² / (‖ΔW‖²/m), 1 = the uniform share;
- a row is *starved* when its share, smoothed by an EMA over measured steps, is below 0.1;
- leverage of row i: ℓ_i = ‖U_i‖² for the polar factor U = polar(M) of the momentum M (exact SVD),
  reported relative to uniform as ℓ_i·m/rank(M) (1 = uniform);
- a hidden unit is *inactive* when its mean |activation| is below 0.1 × the layer median;
- row-norm spread: the coefficient of variation std/mean of ‖W_i‖.

Nothing here changes the update: ΔW is the difference of weight snapshots taken by optimizer
step hooks around ``step()``, and activations are read by forward hooks. GPT-2 ``Conv1D`` layers
(weight stored (in, out)) are read transposed, so rows are output neurons there too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..optim import lookahead_momentum
from ..param_groups import is_in_out_linear

#: module names of MLP input projections (SwiGLU gate/up, GELU fc; common spellings in LLaMA/T5/GPT code)
MLP_INPUT_NAMES = frozenset(
    {"gate", "up", "fc", "c_fc", "fc1", "w1", "w3", "gate_proj", "up_proj", "wi", "wi_0", "wi_1"}
)
#: smoothed share below which a row counts as starved (a tenth of the uniform share)
STARVED_SHARE = 0.1
#: mean |activation| below this fraction of the layer median marks a hidden unit inactive
INACTIVE_RATIO = 0.1
#: EMA factor of the smoothed shares (an averaging window of about 1/(1 − 0.9) = 10 measurements)
SHARE_EMA_BETA = 0.9
#: singular values below this fraction of the largest are treated as zero when counting rank
RANK_RTOL = 1e-10


def row_update_shares(delta: Tensor) -> Tensor:
    """share_i = ‖ΔW_i‖² / (‖ΔW‖²/m) for an update ΔW [m, n]; all zeros if ΔW is zero."""
    energy = delta.detach().double().square().sum(dim=-1)
    total = energy.sum()
    if total == 0:
        return torch.zeros_like(energy)
    return energy * (energy.numel() / total)


def leverage_scores(M: Tensor) -> Tensor:
    """ℓ_i = ‖U_i‖² of the thin-SVD left factor of M [m, n] (float64, exact): the row norms² of polar(M).

    Only singular directions above ``RANK_RTOL`` × σ_max count, so Σℓ_i = rank(M).
    """
    U, S, _ = torch.linalg.svd(M.detach().double(), full_matrices=False)
    keep = S > RANK_RTOL * S.max().clamp_min(torch.finfo(torch.float64).tiny)
    return U[:, keep].square().sum(dim=-1)


def relative_leverage(M: Tensor) -> Tensor:
    """ℓ_i · m / rank(M): leverage relative to a row-uniform factor (1 = uniform, 0 = row gets nothing)."""
    lev = leverage_scores(M)
    rank = lev.sum()
    return lev * (lev.numel() / rank) if rank > 0.5 else lev


def inactive_fraction(mean_abs_activation: Tensor, ratio: float = INACTIVE_RATIO) -> float:
    """Fraction of units whose mean |activation| is below ``ratio`` × the median over units."""
    median = mean_abs_activation.median()
    return float((mean_abs_activation < ratio * median).double().mean())


def row_norm_spread(W: Tensor) -> float:
    """Coefficient of variation std/mean of the row norms ‖W_i‖ (0 = all rows the same norm)."""
    norms = W.detach().double().norm(dim=-1)
    mean = norms.mean()
    return float(norms.std(unbiased=False) / mean) if mean > 0 else 0.0


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored (in, out)); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_in_out_linear(module):
        return module.weight.size(0), module.weight.size(1)
    return None


def unwrap_optimizer(optimizer: Any) -> Optimizer:
    """The torch optimizer inside wrappers that keep it in ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``), which have no step hooks of their own."""
    while not isinstance(getattr(optimizer, "_optimizer_step_pre_hooks", None), dict) and hasattr(
        optimizer, "optimizer"
    ):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{type(optimizer).__name__} is not a torch.optim.Optimizer nor a wrapper holding one in .optimizer"
        )
    return optimizer


def find_mlp_input_projections(model: nn.Module) -> dict[str, nn.Module]:
    """Tall linear layers (out > in; ``nn.Linear`` or GPT-2 ``Conv1D``) named like an MLP input projection."""
    found = {}
    for name, module in model.named_modules():
        features = linear_features(module)
        if features is not None and name.rsplit(".", 1)[-1] in MLP_INPUT_NAMES and features[1] > features[0]:
            found[name] = module
    return found


def _parent_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


@dataclass
class HealthSnapshot:
    """One measurement: totals over all tracked layers, and per layer (keyed by module name)."""

    starved_fraction: float
    act_dead_fraction: float
    layer_starved: dict[str, float] = field(default_factory=dict)
    layer_act_dead: dict[str, float] = field(default_factory=dict)
    layer_row_norm_cv: dict[str, float] = field(default_factory=dict)


class NeuronHealth:
    """Track update shares, starvation and activity of a model's tall MLP input projections.

    Usage::

        health = NeuronHealth(model).attach(optimizer)   # any torch.optim.Optimizer(s)
        ...train as usual...
        snap = health.measure()                           # starved / inactive fractions
        hist = health.leverage(optimizer)                 # relative leverage per layer

    ``modules``: names of the projections to track (default: :func:`find_mlp_input_projections`).
    ``every``: measure ΔW on every ``every``-th optimizer step only; the EMA runs over measured steps.

    Cost per measured step, for each tracked W [m, n]: one copy of W before ``step()`` (m·n extra
    floats held during the step) and a subtraction and row-norm after it, O(m·n), against the
    O(m·n²) of the polar factor itself. Activation hooks add one |x|-sum over each MLP hidden
    activation per training forward, O(tokens·m). ``leverage`` runs an exact float64 SVD, O(m·n²),
    so call it only every few hundred steps. ``seconds`` accumulates the time spent in the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Iterable[str] | None = None,
        *,
        every: int = 1,
        ema_beta: float = SHARE_EMA_BETA,
        starved_share: float = STARVED_SHARE,
        inactive_ratio: float = INACTIVE_RATIO,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"invalid every: {every!r} (expected an integer ≥ 1)")
        if not 0.0 <= ema_beta < 1.0:
            raise ValueError(f"invalid ema_beta: {ema_beta!r} (expected a number in [0, 1))")
        named = dict(model.named_modules())
        if modules is None:
            self.projections = find_mlp_input_projections(model)
        else:
            self.projections = {}
            for name in modules:
                module = named.get(name)
                if module is None or linear_features(module) is None:
                    raise ValueError(f"{name!r} is not an nn.Linear (or GPT-2 Conv1D) of the model")
                self.projections[name] = module
        if not self.projections:
            raise ValueError("no MLP input projection found; name the modules to track with modules=[...]")
        self.every = every
        self.ema_beta = ema_beta
        self.starved_share = starved_share
        self.inactive_ratio = inactive_ratio
        self.step = 0
        self.measured_steps = 0
        self.seconds = 0.0
        self.smoothed_shares: dict[str, Tensor] = {}
        self.last_shares: dict[str, Tensor] = {}
        self._activation_sum: dict[str, Tensor] = {}
        self._activation_count: dict[str, int] = {}
        self._snapshots: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        self._driver: int | None = None
        #: projections stored (in, out): their weights are read transposed
        self._in_out = {name for name, module in self.projections.items() if is_in_out_linear(module)}
        self.activation_sites = self._hook_activations(named)

    # ------------------------------------------------------------------ hooks
    def _hook_activations(self, named: dict[str, nn.Module]) -> dict[str, str]:
        """Hook each MLP's hidden activation: the input of the sibling layer that reads the hidden
        units (the down projection) where there is one, else the projection's own output.

        Returns activation-site name → the module whose input (or output) is read.
        """
        sites: dict[str, str] = {}
        for name, proj in self.projections.items():
            parent = _parent_name(name)
            if parent in sites:
                continue
            hidden = linear_features(proj)[1]
            down = next(
                (
                    f"{parent}.{child}" if parent else child
                    for child, m in (named[parent].named_children() if parent in named else [])
                    if (features := linear_features(m)) is not None and features[0] == hidden and m is not proj
                ),
                None,
            )
            key = parent or name
            if down is not None:
                self._handles.append(named[down].register_forward_pre_hook(self._make_activation_hook(key, pre=True)))
                sites[key] = down
            else:
                self._handles.append(proj.register_forward_hook(self._make_activation_hook(key, pre=False)))
                sites[key] = name
        return sites

    def _make_activation_hook(self, key: str, *, pre: bool):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any = None) -> None:
            if not module.training:
                return
            start = time.perf_counter()
            x = (args[0] if pre else output).detach()
            flat = x.reshape(-1, x.size(-1))
            total = flat.abs().sum(dim=0, dtype=torch.float64)
            if key in self._activation_sum:
                self._activation_sum[key] += total
            else:
                self._activation_sum[key] = total
            self._activation_count[key] = self._activation_count.get(key, 0) + flat.size(0)
            self.seconds += time.perf_counter() - start

        if pre:
            return lambda module, args: hook(module, args)
        return hook

    def attach(self, *optimizers: Optimizer) -> NeuronHealth:
        """Register step hooks on the optimizers that own tracked weights; returns ``self``.

        Wrappers (accelerate's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) are
        unwrapped: the hooks go on the torch optimizer they hold in ``.optimizer``.
        """
        tracked = {id(m.weight) for m in self.projections.values()}
        for optimizer in map(unwrap_optimizer, optimizers):
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]} & tracked
            if not owned:
                continue
            if self._driver is None:
                self._driver = id(optimizer)
            self._handles.append(optimizer.register_step_pre_hook(self._before_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_step))
        if self._driver is None:
            raise ValueError("none of the optimizers trains a tracked MLP projection")
        return self

    def detach(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _owned(self, optimizer: Optimizer) -> list[tuple[str, Tensor]]:
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        return [(name, m.weight) for name, m in self.projections.items() if id(m.weight) in ids]

    def _rows(self, name: str, W: Tensor) -> Tensor:
        """``W`` [out, in] for projection ``name``: a view, transposed where it is stored (in, out)."""
        return W.mT if name in self._in_out else W

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self.step % self.every:
            return
        start = time.perf_counter()
        for name, weight in self._owned(optimizer):
            self._snapshots[name] = weight.detach().clone()
        self.seconds += time.perf_counter() - start

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        start = time.perf_counter()
        measured = False
        for name, weight in self._owned(optimizer):
            before = self._snapshots.pop(name, None)
            if before is None:
                continue
            delta = self._rows(name, weight.detach() - before)
            if not bool(delta.any()):  # a skipped step (e.g. non-finite gradient) carries no information
                continue
            shares = row_update_shares(delta).float()
            self.last_shares[name] = shares
            previous = self.smoothed_shares.get(name)
            self.smoothed_shares[name] = shares if previous is None else previous.lerp(shares, 1 - self.ema_beta)
            measured = True
        if id(optimizer) == self._driver:
            self.step += 1
            self.measured_steps += int(measured)
        self.seconds += time.perf_counter() - start

    # ------------------------------------------------------------------ measurements
    def layer_starved(self) -> dict[str, float]:
        """Per projection: the fraction of rows whose smoothed share is below ``starved_share``."""
        return {name: float((s < self.starved_share).double().mean()) for name, s in self.smoothed_shares.items()}

    def starved_fraction(self) -> float:
        """Starved rows over all tracked rows (0 before the first measured step)."""
        if not self.smoothed_shares:
            return 0.0
        starved = sum(int((s < self.starved_share).sum()) for s in self.smoothed_shares.values())
        return starved / sum(s.numel() for s in self.smoothed_shares.values())

    def activation_means(self) -> dict[str, Tensor]:
        """Mean |activation| of each hidden unit since the last reset, per MLP."""
        return {k: self._activation_sum[k] / self._activation_count[k] for k in self._activation_sum}

    def measure(self, *, reset_activations: bool = True) -> HealthSnapshot:
        """Starved and inactive fractions (overall and per layer) and row-norm spreads, now."""
        means = self.activation_means()
        layer_dead = {k: inactive_fraction(v, self.inactive_ratio) for k, v in means.items()}
        units = {k: v.numel() for k, v in means.items()}
        total_units = sum(units.values())
        act_dead = sum(layer_dead[k] * units[k] for k in means) / total_units if total_units else 0.0
        if reset_activations:
            self._activation_sum.clear()
            self._activation_count.clear()
        return HealthSnapshot(
            starved_fraction=self.starved_fraction(),
            act_dead_fraction=act_dead,
            layer_starved=self.layer_starved(),
            layer_act_dead=layer_dead,
            layer_row_norm_cv={
                name: row_norm_spread(self._rows(name, m.weight)) for name, m in self.projections.items()
            },
        )

    def leverage(self, *optimizers: Optimizer) -> dict[str, Tensor]:
        """Relative leverage (ℓ_i·m/rank) of polar(M) for each tracked projection, exact SVD.

        M is the matrix the optimizer orthogonalizes where it can be read from its state: the
        Nesterov look-ahead g + μ(b − g) when the group has ``nesterov`` and a ``momentum_buffer``
        b exists (this library, torch.optim.Muon, SGD), else the buffer b, else Adam's
        ``exp_avg``, else the gradient. Layers with none of these are left out.
        """
        groups = {id(p): (opt, g) for opt in optimizers for g in opt.param_groups for p in g["params"]}
        result: dict[str, Tensor] = {}
        for name, module in self.projections.items():
            p = module.weight
            if id(p) not in groups:
                continue
            optimizer, group = groups[id(p)]
            state = optimizer.state.get(p, {})
            if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                M = state["momentum_buffer"]
                if p.grad is not None:
                    M = lookahead_momentum(p.grad, M, group.get("momentum", 0.0), group.get("nesterov", False))
            elif "exp_avg" in state:
                M = state["exp_avg"]
            elif p.grad is not None:
                M = p.grad
            else:
                continue
            if bool(M.any()):
                result[name] = relative_leverage(self._rows(name, M)).float()
        return result

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "measured_steps": self.measured_steps,
            "smoothed_shares": {k: v.clone() for k, v in self.smoothed_shares.items()},
            "activation_sum": {k: v.clone() for k, v in self._activation_sum.items()},
            "activation_count": dict(self._activation_count),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.measured_steps = int(state["measured_steps"])
        # onto the model's device: checkpoints are read onto the CPU
        device = next(iter(self.projections.values())).weight.device
        self.smoothed_shares = {k: v.to(device, copy=True) for k, v in state["smoothed_shares"].items()}
        self._activation_sum = {k: v.to(device, copy=True) for k, v in state["activation_sum"].items()}
        self._activation_count = dict(state["activation_count"])


def leverage_histogram(values: Tensor, bins: int = 40, upper: float = 4.0) -> dict[str, list[float]]:
    """Histogram of relative leverage on [0, upper] (values above land in the last bin)."""
    clipped = values.detach().double().clamp(0.0, upper).cpu().numpy()
    counts, edges = np.histogram(clipped, bins=bins, range=(0.0, upper))
    return {"counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges]}


__all__ = [
    "HealthSnapshot",
    "NeuronHealth",
    "find_mlp_input_projections",
    "inactive_fraction",
    "leverage_histogram",
    "leverage_scores",
    "linear_features",
    "relative_leverage",
    "row_norm_spread",
    "row_update_shares",
    "unwrap_optimizer",
]
