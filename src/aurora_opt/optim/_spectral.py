"""The shared shell of every spectral optimizer: validation, hybrid AdamW groups, state, the step.

A subclass supplies only what is specific to its algorithm: its defaults, their validation, the lazy
state it needs and ``_direction``, the map from the momentum matrices to the update direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from .. import distributed
from ..matrices import as_matrices, matrix_shape
from ..polar import DEFAULT_POLAR, check_reduction, get_polar, make_orthogonalizer, scaled_to_unit_max
from ..sync import host_syncs_allowed
from .adamw import adamw_update_

ADAMW = "adamw"
NONFINITE_POLICIES = ("raise", "skip")
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
#: how a group's weights are stored: ``"out_in"`` (nn.Linear, convolutions) or ``"in_out"``
#: (transformers' GPT-2 ``Conv1D``: y = x·W), trained exactly as the transposed ``"out_in"`` weight
WEIGHT_LAYOUTS = ("out_in", "in_out")

ADAMW_DEFAULTS: dict[str, Any] = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0}


class NonFiniteGradError(RuntimeError):
    """A gradient holds NaN or ±inf; nothing was changed by the step that found it."""


def lookahead_momentum(grad: Tensor, buf: Tensor, momentum: float | Tensor, nesterov: bool) -> Tensor:
    """The matrix a spectral rule orthogonalizes: g + μ·(b − g) with Nesterov, else the buffer b.

    ``buf`` is the momentum buffer after this step's update b ← μ·b + (1 − μ)·g.
    """
    return grad.lerp(buf, momentum) if nesterov else buf


def adjust_lr(lr: float | Tensor, adjust_lr_fn: str | None, m: int, n: int) -> float | Tensor:
    """The lr actually applied to an m×n matrix, in units of spectral norm per update.

    ``None``/``"original"``: lr·sqrt(max(1, m/n)) (Keller Jordan's Muon, torch.optim.Muon's default);
    ``"match_rms_adamw"``: lr·0.2·sqrt(max(m, n)), giving updates of AdamW's typical RMS (Moonlight).
    """
    if adjust_lr_fn in (None, "original"):
        return lr * math.sqrt(max(1.0, m / n))
    return lr * 0.2 * math.sqrt(max(m, n))


def logical_matrix_shape(p: Tensor, group: dict[str, Any]) -> tuple[int, int, int]:
    """``(B, out, in)`` of the matrices a spectral parameter is trained as, whatever its stored layout."""
    batch, m, n = matrix_shape(p.shape)
    return (batch, n, m) if group["weight_layout"] == "in_out" else (batch, m, n)


def _check_lr(value: Any) -> None:
    """lr: a number ≥ 0, or a 0-d real tensor holding one (a scheduler may change it in place, so a
    compiled step does not recompile)."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dim() != 0 or not value.is_floating_point():
            raise ValueError(
                f"invalid lr: a tensor lr must be a 0-d floating tensor, got shape {tuple(value.shape)} {value.dtype}"
            )
        if value.device.type != "meta":
            _check_float("lr", float(value), 0.0)
        return
    _check_float("lr", value, 0.0)


def _check_float(name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"invalid {name}: {value!r} (expected a number in {bound})")


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"invalid {name}: {value!r} (expected an integer ≥ {low})")


def _check_adamw_hyperparameters(hp: dict[str, Any]) -> None:
    _check_lr(hp["lr"])
    _check_float("eps", hp["eps"], 0.0)
    _check_float("weight_decay", hp["weight_decay"], 0.0)
    betas = hp["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"invalid betas: {betas!r} (expected a pair)")
    for i, beta in enumerate(betas):
        _check_float(f"betas[{i}]", beta, 0.0, 1.0)
        if beta == 1.0:
            raise ValueError(f"invalid betas[{i}]: {beta!r} (expected a number in [0, 1))")


class SpectralOptimizer(Optimizer):
    """Base class: momentum → direction (per algorithm) → shape-scaled, decoupled-decay update.

    Param groups whose ``"algorithm"`` is ``"adamw"`` are trained by AdamW in the same object, with
    ``lr``, ``betas``, ``eps`` and ``weight_decay`` taken from the group or else from ``adamw_*``.
    A group's ``"weight_layout"`` says how its weights are stored: ``"out_in"`` (default; nn.Linear)
    or ``"in_out"`` (transformers' GPT-2 ``Conv1D``), trained exactly as the transposed
    ``"out_in"`` weight would be (shape scale, per-neuron statistics and rows all on output neurons).
    """

    algorithm: ClassVar[str]

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = None,
        polar: str = DEFAULT_POLAR,
        ns_steps: int | None = None,
        polar_dtype: torch.dtype | None = None,
        polar_reduction: str | None = None,
        on_nonfinite_grad: str = "raise",
        adamw_lr: float = ADAMW_DEFAULTS["lr"],
        adamw_betas: tuple[float, float] = ADAMW_DEFAULTS["betas"],
        adamw_eps: float = ADAMW_DEFAULTS["eps"],
        adamw_weight_decay: float = ADAMW_DEFAULTS["weight_decay"],
        maximize: bool = False,
        process_group: Any = None,
        algorithm_defaults: dict[str, Any] | None = None,
        **unexpected: Any,
    ) -> None:
        if unexpected:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s): {', '.join(sorted(unexpected))}"
            )
        self._process_group_arg = process_group
        distributed.resolve_process_group(process_group)
        if on_nonfinite_grad not in NONFINITE_POLICIES:
            raise ValueError(f"invalid on_nonfinite_grad: {on_nonfinite_grad!r} (expected one of {NONFINITE_POLICIES})")
        self.on_nonfinite_grad = on_nonfinite_grad
        self._skipped_steps: Tensor | int = 0
        self._adamw_defaults = {
            "lr": adamw_lr,
            "betas": adamw_betas,
            "eps": adamw_eps,
            "weight_decay": adamw_weight_decay,
            "maximize": maximize,
        }
        _check_adamw_hyperparameters(self._adamw_defaults)
        defaults = dict(
            algorithm=self.algorithm,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            eps=eps,
            adjust_lr_fn=adjust_lr_fn,
            polar=polar,
            ns_steps=ns_steps,
            polar_dtype=polar_dtype,
            polar_reduction=polar_reduction,
            maximize=maximize,
            weight_layout="out_in",
            **(algorithm_defaults or {}),
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups and validation
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._name_unnamed_group(param_group)
        if param_group.get("weight_layout", "out_in") not in WEIGHT_LAYOUTS:
            raise ValueError(
                f"invalid weight_layout: {param_group['weight_layout']!r} (expected one of {WEIGHT_LAYOUTS})"
            )
        if param_group.get("algorithm") == ADAMW:
            for key, value in self._adamw_defaults.items():
                param_group.setdefault(key, value)
            super().add_param_group(param_group)
            self._validate_adamw_group(self.param_groups[-1])
            return
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_spectral_group(group)
        except ValueError:
            self.param_groups.pop()
            raise

    def _name_unnamed_group(self, param_group: dict[str, Any]) -> None:
        """Name the parameters of a plain ``{"params": [...]}`` group added to named groups (such as
        :func:`aurora_opt.param_groups` makes) ``"param_groups[g][i]"``: torch needs all groups
        named or none."""
        if not self.param_groups or "param_names" not in self.param_groups[0] or "param_names" in param_group:
            return
        params = param_group["params"]
        if isinstance(params, set):  # torch rejects sets (unordered) with its own message
            return
        params = [params] if isinstance(params, Tensor) else list(params)
        param_group["params"] = params
        if all(isinstance(p, Tensor) for p in params):
            index = len(self.param_groups)
            param_group["param_names"] = [f"param_groups[{index}][{i}]" for i in range(len(params))]

    def _validate_adamw_group(self, group: dict[str, Any]) -> None:
        try:
            _check_adamw_hyperparameters(group)
            self._check_params(group, min_dim=0)
        except ValueError:
            self.param_groups.pop()
            raise

    def _validate_spectral_group(self, group: dict[str, Any]) -> None:
        if group["algorithm"] != self.algorithm:
            raise ValueError(
                f"invalid algorithm {group['algorithm']!r} for {type(self).__name__}: "
                f"expected {self.algorithm!r} or {ADAMW!r}"
            )
        _check_lr(group["lr"])
        _check_float("weight_decay", group["weight_decay"], 0.0)
        if not isinstance(group["maximize"], bool):
            raise ValueError(f"invalid maximize: {group['maximize']!r} (expected a bool)")
        _check_float("momentum", group["momentum"], 0.0, 1.0)
        if group["momentum"] == 1.0:
            raise ValueError("invalid momentum: 1.0 (expected a number in [0, 1))")
        if not isinstance(group["nesterov"], bool):
            raise ValueError(f"invalid nesterov: {group['nesterov']!r} (expected a bool)")
        _check_float("eps", group["eps"], 0.0, low_open=True)
        if group["adjust_lr_fn"] not in ADJUST_LR_FNS:
            raise ValueError(f"invalid adjust_lr_fn: {group['adjust_lr_fn']!r} (expected one of {ADJUST_LR_FNS})")
        get_polar(group["polar"])
        if group["ns_steps"] is not None:
            _check_int("ns_steps", group["ns_steps"], 1)
        if group["polar_dtype"] not in (None, torch.float32, torch.float64, torch.bfloat16, torch.float16):
            raise ValueError(f"invalid polar_dtype: {group['polar_dtype']!r} (expected a floating dtype or None)")
        check_reduction(group["polar_reduction"])
        self._validate_algorithm(group)
        self._check_params(group, min_dim=2)
        if group["weight_layout"] == "in_out" and any(p.dim() > 3 for p in group["params"]):
            raise ValueError(
                "weight_layout 'in_out' applies to 2-D weights and 3-D stacks of them, not convolution kernels"
            )

    def _validate_algorithm(self, group: dict[str, Any]) -> None:
        """Check the algorithm's own hyperparameters; raise ``ValueError`` naming the bad one."""

    def _check_params(self, group: dict[str, Any], *, min_dim: int) -> None:
        for index, p in enumerate(group["params"]):
            if p.is_complex():
                raise ValueError(
                    f"{self._param_name(group, index)} is complex; {type(self).__name__} supports real parameters"
                )
            if not p.is_floating_point():
                raise ValueError(f"{self._param_name(group, index)} has dtype {p.dtype}; expected a floating dtype")
            if p.dim() < min_dim:
                raise ValueError(
                    f"{self._param_name(group, index)} of shape {tuple(p.shape)} is {p.dim()}-D; the "
                    f"{self.algorithm} rule needs matrices (2-D or more). Train it with AdamW in the same "
                    "optimizer ({'params': [...], 'algorithm': 'adamw'}), or split a model with "
                    "aurora_opt.param_groups(model)"
                )

    @staticmethod
    def _param_name(group: dict[str, Any], index: int) -> str:
        names = group.get("param_names")
        return f"parameter {names[index]!r}" if names else f"parameter {index} of its group"

    # ------------------------------------------------------------------ state dict
    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient (``on_nonfinite_grad="skip"``); reading it syncs."""
        return int(self._skipped_steps)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["skipped_steps"] = self.skipped_steps
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._skipped_steps = int(state_dict.pop("skipped_steps", 0))
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # checkpoints from before an option existed get its default
            group.setdefault("weight_layout", "out_in")
            if group.get("algorithm") != ADAMW:
                for key, value in self.defaults.items():
                    group.setdefault(key, value)

    # ------------------------------------------------------------------ the step
    def _check_grads(self) -> bool | Tensor:
        """Raise on complex/sparse gradients; decide whether the step applies.

        Returns True (apply), False (skip: a gradient is non-finite) or, where the step must not read
        device values on the host (:func:`host_syncs_allowed`), a 0-d bool tensor that masks every
        update of the step. Runs before anything is changed, so an error or a skipped step leaves
        parameters and state exactly as they were. ``"raise"`` reads one flag on the host per step
        (eager); under ``torch.compile`` it becomes a device-side assertion instead, which stops the
        step with a RuntimeError (CPU) or a CUDA device-side assert.
        """
        grads, where = [], []
        for group in self.param_groups:
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    name = self._param_name(group, index)
                    raise RuntimeError(f"{name} has a sparse gradient; {type(self).__name__} needs dense gradients")
                if p.grad.is_complex():
                    name = self._param_name(group, index)
                    raise RuntimeError(f"{name} has a complex gradient; {type(self).__name__} needs real gradients")
                grads.append(p.grad)
                where.append((group, index, p))
        if not grads or grads[0].device.type == "meta":  # meta tensors hold no values to check
            return True
        finite = distributed.finite_flags(grads, distributed.resolve_process_group(self._process_group_arg))
        all_finite = finite.all()
        if self.on_nonfinite_grad == "skip" and not host_syncs_allowed(all_finite):
            return all_finite
        if torch.compiler.is_compiling():
            torch._assert_async(all_finite, "a gradient is non-finite (NaN or inf); the optimizer step was stopped")
            return True
        if bool(all_finite):
            return True
        if self.on_nonfinite_grad == "skip":
            return False
        first = int((~finite).nonzero()[0])
        group, index, p = where[first]
        raise NonFiniteGradError(
            f"{self._param_name(group, index)} of shape {tuple(p.shape)} has a non-finite gradient "
            "(NaN or inf); no parameter or optimizer state was changed. Pass on_nonfinite_grad='skip' "
            "to skip such steps instead."
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step; parameters without a gradient are left alone."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        decision = self._check_grads()
        if decision is False:
            self._skipped_steps = self._skipped_steps + 1
            return loss
        apply = None if decision is True else decision
        self._init_group()
        if apply is not None:
            if not isinstance(self._skipped_steps, Tensor):
                self._skipped_steps = torch.tensor(self._skipped_steps, device=apply.device)
            self._skipped_steps.add_(~apply)
        for group in self.param_groups:
            if group["algorithm"] == ADAMW:
                self._adamw_step(group, apply)
            else:
                self._spectral_step(group, apply)
        return loss

    def _init_group(self) -> None:
        """Create the missing lazy state of every parameter that has a gradient.

        ``torch.compile`` runs a method of this name eagerly instead of tracing it (as for
        torch.optim's own optimizers), so the first step compiles the same graph as every later one.
        """
        for group, p in ((g, p) for g in self.param_groups for p in g["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            if group["algorithm"] == ADAMW:
                if not state:
                    # the step count lives on the parameter's device: bias corrections need no host sync
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != p.device:  # a checkpoint saved by an older version
                    state["step"] = state["step"].to(p.device)
            elif not state and p.numel() > 0:
                self._init_state(p, state, group)

    def _adamw_step(self, group: dict[str, Any], apply: Tensor | None) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            adamw_update_(
                p,
                -p.grad if group["maximize"] else p.grad,
                state["exp_avg"],
                state["exp_avg_sq"],
                state["step"],
                lr=group["lr"],
                betas=tuple(group["betas"]),
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                apply=apply,
            )

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Create the lazy state of a spectral parameter (override to add more, then call this)."""
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _spectral_step(self, group: dict[str, Any], apply: Tensor | None) -> None:
        # an empty matrix has no direction to take
        params = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
        process_group = self._step_process_group(group, params)
        if not params:
            return
        momentum = group["momentum"]
        momenta, states = [], []
        for p in params:
            state = self.state[p]
            grad = distributed.local_tensor(p.grad)
            buf = distributed.local_tensor(state["momentum_buffer"])
            if group["maximize"]:
                grad = -grad
            if apply is None:
                buf.lerp_(grad, 1 - momentum)
            else:  # a skipped step leaves the buffer as it was (weight 0, gradient zeroed)
                grad = torch.where(apply, grad, 0)
                buf.lerp_(grad, torch.where(apply, 1 - momentum, 0.0).to(buf.dtype))
            momenta.append(lookahead_momentum(grad, buf, momentum, group["nesterov"]))
            states.append(state)
        saved_state = None if apply is None else [t.clone() for s in states for t in self._direction_state(s)]
        orthogonalize = make_orthogonalizer(
            group["polar"],
            steps=group["ns_steps"],
            eps=group["eps"],
            dtype=group["polar_dtype"],
            reduction=group["polar_reduction"],
        )
        in_out = group["weight_layout"] == "in_out"

        def compute(indices: list[int], whole_momenta: list[Tensor]) -> list[Tensor]:
            # Every direction is invariant to the scale of M: an exact power-of-two rescale keeps norms
            # finite for gradients near 1e±30 and keeps a low-precision polar_dtype cast from overflowing.
            matrices = [
                scaled_to_unit_max(as_matrices(M).to(torch.promote_types(M.dtype, torch.float32)))
                for M in whole_momenta
            ]
            if in_out:  # directions are taken on the (out, in) matrices, rows = output neurons
                matrices = [M.mT for M in matrices]
            directions = self._directions(matrices, [states[i] for i in indices], group, orthogonalize)
            return [U.mT for U in directions] if in_out else directions

        if process_group is None:
            directions = [
                U.reshape(p.shape).to(p.dtype) for p, U in zip(params, compute(list(range(len(params))), momenta))
            ]
        else:
            direction_state = [self._direction_state(state) for state in states]
            dtypes = [p.dtype for p in params]
            if distributed.is_dtensor(params[0]):
                directions = distributed.sharded_directions(
                    momenta, [p.shape for p in params], dtypes, direction_state, compute, process_group
                )
            else:
                directions = distributed.replicated_directions(momenta, dtypes, direction_state, compute, process_group)
        if saved_state is not None:
            for t, old in zip((t for s in states for t in self._direction_state(s)), saved_state):
                t.copy_(torch.where(apply, t, old))
        lr = group["lr"]
        decay = 1 - lr * group["weight_decay"]
        if apply is not None:
            decay = torch.where(apply, decay, 1.0)
        for p, U in zip(params, directions):
            _, m, n = logical_matrix_shape(p, group)
            weight = distributed.local_tensor(p)
            weight.mul_(decay)
            scale = adjust_lr(lr, group["adjust_lr_fn"], m, n)
            if apply is not None:
                U = torch.where(apply, U, 0)
            if isinstance(scale, Tensor):
                weight.addcmul_(U, scale.to(U.dtype), value=-1)
            else:
                weight.add_(U, alpha=-scale)

    def _step_process_group(self, group: dict[str, Any], params: list[Tensor]) -> Any | None:
        """The process group this step shares its work over (``None``: alone), after checking the setup.

        Runs before anything is changed; with a group it is collective (every rank must call it).
        """
        process_group = distributed.resolve_process_group(self._process_group_arg)
        sharded = any(distributed.is_dtensor(p) for p in group["params"])
        if process_group is None:
            if sharded:
                raise ValueError(
                    "DTensor (sharded) parameters need the distributed step; do not pass process_group='local'"
                )
            return None
        if not group["params"] or (not sharded and dist.get_world_size(process_group) == 1):
            return None
        distributed.check_sharding(group["params"], process_group)
        device = distributed.check_same_device([distributed.local_tensor(p) for p in group["params"]])
        distributed.check_same_work([p.shape for p in params], [p.dtype for p in params], device, process_group)
        return process_group

    @staticmethod
    def _direction_state(state: dict[str, Any]) -> list[Tensor]:
        """The state tensors a direction function writes: all but the momentum, in key order.

        The distributed step updates them on the rank that computes the direction and copies them
        to every other rank, so each rank holds the whole state, identical everywhere.
        """
        tensors = []
        for key in sorted(state):
            value = state[key]
            if key == "momentum_buffer" or not isinstance(value, Tensor):
                continue
            if distributed.is_dtensor(value):
                raise ValueError(f"state {key!r} is a DTensor; direction state must be a whole (replicated) tensor")
            tensors.append(value)
        return tensors

    #: state keys (tensors whose first dimension is the parameter's batch of matrices) that
    #: ``_direction`` may read or update when same-shape matrices are stacked into one call;
    #: matrices with any other state besides ``"momentum_buffer"`` are never stacked
    stacked_state: ClassVar[tuple[str, ...]] = ()

    def _directions(
        self,
        momenta: list[Tensor],
        states: list[dict[str, Any]],
        group: dict[str, Any],
        orthogonalize: Callable[[Tensor], Tensor],
    ) -> list[Tensor]:
        """Directions for a group's matrices (each ``[B, m, n]``, fp32 or wider).

        Matrices of the same shape, dtype and device are concatenated along the batch dimension
        and handled by one ``_direction`` call (one batched polar factor), in chunks of at most as
        many elements as the group's largest matrix, so stacking adds at most one copy of the
        largest matrix. The ``stacked_state`` tensors are concatenated the same way and written
        back. Returned directions may be views of a chunk's result.
        """
        directions: list[Tensor | None] = [None] * len(momenta)
        for chunk in stacking_plan(momenta, states, set(self.stacked_state) | {"momentum_buffer"}):
            if len(chunk) == 1:
                i = chunk[0]
                directions[i] = self._direction(momenta[i], states[i], group, orthogonalize)
                continue
            keys = [k for k in self.stacked_state if k in states[chunk[0]]]
            merged = {k: torch.cat([states[i][k] for i in chunk]) for k in keys}
            U = self._direction(torch.cat([momenta[i] for i in chunk]), merged, group, orthogonalize)
            sizes = [momenta[i].size(0) for i in chunk]
            for k in keys:
                for i, part in zip(chunk, merged[k].split(sizes)):
                    states[i][k].copy_(part)
            for i, part in zip(chunk, U.split(sizes)):
                directions[i] = part
        return directions  # type: ignore[return-value]

    def _direction(
        self, M: Tensor, state: dict[str, Any], group: dict[str, Any], orthogonalize: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """The algorithm's update direction for momentum matrices ``M`` [B, m, n] (before lr)."""
        raise NotImplementedError


def stacking_plan(momenta: list[Tensor], states: list[dict[str, Any]], stackable_keys: set[str]) -> list[list[int]]:
    """Indices of matrices to handle together: same shape, dtype and device, state keys all in
    ``stackable_keys``, at most as many elements per chunk as the largest matrix (at least one)."""
    budget = max([M.numel() for M in momenta] + [0])
    groups: dict[tuple, list[int]] = {}
    chunks: list[list[int]] = []
    for i, (M, state) in enumerate(zip(momenta, states)):
        if not set(state) <= stackable_keys:
            chunks.append([i])
            continue
        groups.setdefault((tuple(M.shape), M.dtype, M.device, tuple(sorted(state))), []).append(i)
    for indices in groups.values():
        per_chunk = max(1, budget // momenta[indices[0]].numel())
        chunks.extend(indices[j : j + per_chunk] for j in range(0, len(indices), per_chunk))
    return sorted(chunks)


def spectral_kwargs_doc(lr: float, weight_decay: float, reduction: str | None = None) -> str:
    """The shared ``Args:`` text of the spectral optimizers (defaults: lr, weight decay, polar_reduction)."""
    return rf"""
        params: iterable of parameters or named parameters, or of param-group dicts. Groups with
            ``"algorithm": "adamw"`` are trained by AdamW (embeddings, output head, norms, biases).
        lr (float): learning rate in units of spectral norm per update, before the shape scaling
            of ``adjust_lr_fn`` (default: {lr}).
        weight_decay (float): decoupled weight decay, p ← p·(1 − lr·weight_decay) (default: {weight_decay}).
        momentum (float): momentum factor μ of the EMA buffer b ← μ·b + (1 − μ)·g (default: 0.95).
            ``0`` orthogonalizes the gradient itself.
        nesterov (bool): use the Nesterov look-ahead g + μ·(b − g) (default: True).
        eps (float): added to norms before dividing (default: 1e-7).
        adjust_lr_fn (str or None): ``None``/``"original"``: lr·sqrt(max(1, m/n));
            ``"match_rms_adamw"``: lr·0.2·sqrt(max(m, n)) (default: None).
        polar (str or callable): polar-factor backend, one of ``aurora_opt.POLAR_BACKENDS``
            (default: ``"{DEFAULT_POLAR}"``).
        ns_steps (int or None): iterations of the polar backend; ``None`` takes its default.
        polar_dtype (torch.dtype or None): precision of the polar iteration; ``None`` is bf16 on
            CUDA and fp32 elsewhere.
        polar_reduction (str or None): ``"qr"`` computes the polar factor of a matrix at least
            twice as tall as wide (or wide as tall) as Q·polar(R), X = QR by a shifted CholeskyQR2
            in fp32: the same direction to fp32 rounding, 0.72× the time at 1024×256 and 1.00× at
            512×256 on the CPU (``aurora_opt.polar.qr_reduced``); ``None`` runs the backend on the
            matrix; ``"auto"``: ``"qr"`` where the polar factor runs in fp32 or float64, ``None``
            in bf16/fp16 (the CUDA default, where the reduction's cost is not yet measured)
            (default: {reduction!r}). ``DualAurora`` computes no m×n polar factor and rejects it.
        on_nonfinite_grad (str): ``"raise"`` (default) raises :class:`NonFiniteGradError` naming the
            parameter before anything is changed; ``"skip"`` skips the whole step and counts it in
            ``optimizer.skipped_steps``.
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: defaults of AdamW groups
            (3e-4, (0.9, 0.95), 1e-8, 0.0).
        process_group (ProcessGroup, "local" or None): the ranks that share the orthogonalization
            work (see ``aurora_opt.distributed``). ``None`` (default): the default group when
            torch.distributed is initialized, else none; ``"local"``: every rank steps alone.
"""
