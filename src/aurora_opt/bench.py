"""Speed and accuracy of Muon, reference-style Aurora, fast Aurora and Riemannian Aurora, side by side.

Times ``optimizer.step()`` per matrix shape and for the whole step over the parameter shapes of a
small SwiGLU GPT, all optimizers with the same polar backend, interleaved in one process (round
robin), and reports each optimizer's fastest step as a ratio to Muon's (the median beside it). With
every timing it reports the accuracy of the update direction U (oriented tall, m ≥ n):

- row error: max_i |‖U_i‖²/mean_j ‖U_j‖² − 1| (0 = every row gets the same share of the update);
  the mean is n/m where U is semi-orthogonal, less where the momentum has directions too small for
  the polar backend to lift (Polar Express in fp32: σ/σ_max ≲ 1e-4), which the smallest
  mean ‖U_i‖²·m/n over the matrices shows (JSON ``row_share_min``);
- ⟨M, U⟩/⟨M, polar(M)⟩, with polar(M) exact, i.e. ⟨M, U⟩ over the nuclear norm ‖M‖_* (1 for an
  exact Muon step; Aurora gives a little up for the row constraint);
- the distance ‖U − U*‖_F/‖U*‖_F to exact Aurora U* (float64, exact polar factor, rows balanced to
  1e-12: :func:`exact_aurora`), over the non-square matrices: how much of Aurora's direction a
  cheaper balancing or backend gives up.

The GPT is timed twice: on synthetic gradients (fresh noise every step around a fixed signal) and on
momenta recorded from training it with Muon on the embedded corpus (``--train-steps``), which are
harder for a warm-started balancing. It also reports the optimizer state per parameter, the peak
memory allocated during a step beyond what was allocated before it, and how the warm start of the
Gram balancing behaves on a drifting momentum. Writes ``bench.json`` and ``bench.md`` to ``--out``.

    python -m aurora_opt.bench [--out DIR] [--device cpu|cuda] [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .matrices import tall
from .optim import Aurora, Muon, RiemannianAurora, SpectralOptimizer, lookahead_momentum
from .optim._spectral import ADAMW
from .optim.aurora import balanced_polar, row_uniformity_error
from .polar import DEFAULT_POLAR, get_polar, svd_polar
from .provenance import commit_label, provenance, write_result
from .train.data import get_batch, stdlib_prefix
from .train.gpt import GPT, GPTConfig

#: the matrix shapes of the issue (124M–8B-class MLP projections), timed when CUDA is present
GPU_SHAPES = [(768, 3072), (3072, 768), (2048, 5632), (5632, 2048), (4096, 14336), (14336, 4096)]
#: the same aspect ratios scaled down 8× so that a 2-core CPU finishes in minutes
CPU_SHAPES = [(m // 8, n // 8) for m, n in GPU_SHAPES]
QUICK_SHAPES = [(16, 48), (48, 16)]
#: bytes of the standard library's source that the recorded training run reads (a fixed text)
TRAINING_TEXT_BYTES = 1_000_000

#: name → (class, keyword arguments); every optimizer gets the same polar backend and dtype.
#: "aurora_reference" is the reference release's algorithm: K = 2 polar factors, β = 0.5, rows as computed.
#: "muon_qr": with ``polar_reduction="qr"`` (the polar factor of a matrix ≥ 2× taller than wide from
#: its n×n triangular factor), as "aurora" reduces its own by default ("auto") in fp32: compared with
#: each other in :data:`REDUCED_PAIR`. "aurora_direct": Aurora with its polar factor computed directly
#: (``polar_reduction=None``, what "auto" does in bf16/fp16).
#: "aurora_gram1": one Gram balancing step per optimizer step from the warm start, the row correction
#: removing what it leaves (cheaper, further from exact Aurora: the distance column shows how far).
OPTIMIZERS: dict[str, tuple[type[SpectralOptimizer], dict[str, Any]]] = {
    "muon": (Muon, {}),
    "muon_qr": (Muon, {"polar_reduction": "qr"}),
    "aurora_reference": (
        Aurora,
        {"balance": "polar", "balance_steps": 2, "balance_beta": 0.5, "row_correction": False, "polar_reduction": None},
    ),
    "aurora": (Aurora, {}),
    "aurora_direct": (Aurora, {"polar_reduction": None}),
    "aurora_gram1": (Aurora, {"balance_steps": 1}),
    "riemannian_aurora": (RiemannianAurora, {}),
}
#: Aurora's cost over Muon's where both reduce their polar factors (in fp32)
REDUCED_PAIR = ("aurora", "muon_qr")


def gpt_shapes(d_model: int, layers: int, expansion: int) -> list[tuple[int, int]]:
    """Hidden matrices of a SwiGLU GPT in ``nn.Linear`` layout (out, in): per layer q, k, v, o
    (d×d), gate and up (e·d × d) and down (d × e·d). Embeddings and head are AdamW's, left out."""
    hidden = expansion * d_model
    return [(d_model, d_model)] * 4 * layers + [(hidden, d_model)] * 2 * layers + [(d_model, hidden)] * layers


def synthetic_gradient(shape: tuple[int, int], generator: torch.Generator, device: torch.device) -> Tensor:
    """Gaussian with a low-rank part and unequal rows: row scales log-uniform over two decades
    along the long side (some neurons get 100× the gradient of others, as in training)."""
    m, n = shape
    rank = max(1, min(m, n) // 16)
    low_rank = torch.randn(m, rank, generator=generator) @ torch.randn(rank, n, generator=generator) / math.sqrt(rank)
    G = torch.randn(m, n, generator=generator) + low_rank
    long_side = max(m, n)
    scales = torch.logspace(-1, 1, long_side)[torch.randperm(long_side, generator=generator)]
    G = G * (scales[:, None] if m >= n else scales[None, :])
    return G.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensors allocated by the ops run inside it and alive at the same time
    (device-agnostic; on CUDA the caching allocator's own peak is reported beside it)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owned: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live -= self._owned.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output sharing an input's storage (a view, an in-place result) allocated nothing, even where
        # that storage was allocated before the mode (a view of a parameter would otherwise count it)
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or t._base is not None:
                continue
            key = t.untyped_storage().data_ptr()
            if key in self._owned or key in inputs or key == 0:
                continue
            size = t.untyped_storage().nbytes()
            self._owned[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, key)
        return out


def _make(name: str, shapes: list[tuple[int, int]], polar: str, device: torch.device, seed: int):
    cls, kwargs = OPTIMIZERS[name]
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(0.02 * torch.randn(shape, generator=generator).to(device))
        p.grad = synthetic_gradient(shape, generator, device)
        params.append(p)
    # lr 1 and no weight decay: the change of a parameter is exactly s(m, n)·U
    return cls(params, lr=1.0, weight_decay=0.0, polar=polar, **kwargs), params


#: exact Aurora (:func:`exact_aurora`): Gram balancing steps at most, and the row error they stop at
EXACT_AURORA_STEPS = 100
EXACT_AURORA_TOLERANCE = 1e-12


def exact_aurora(M: Tensor) -> Tensor:
    """Aurora's direction for one momentum M [m, n] (m ≠ n) in float64: the exact SVD polar factor
    of D·M with D balanced until every row is within EXACT_AURORA_TOLERANCE of uniform (at most
    EXACT_AURORA_STEPS Gram steps), no row correction: the point every fast variant approximates."""
    X, transposed = tall(M.double().unsqueeze(0))
    U, _ = balanced_polar(
        X, orthogonalize=svd_polar, steps=EXACT_AURORA_STEPS, beta=None, eps=1e-7, tolerance=EXACT_AURORA_TOLERANCE
    )
    return U[0].mT if transposed else U[0]


class _ExactAurora:
    """:func:`exact_aurora` of each matrix's last momentum, computed once for all optimizers that
    share it (every optimizer here sees the same gradients with the same momentum)."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}

    def __call__(self, index: int, M: Tensor) -> Tensor:
        cached = self._cache.get(index)
        if cached is None or not torch.equal(cached[0], M):
            cached = self._cache[index] = (M, exact_aurora(M))
        return cached[1]


def _accuracy(
    optimizer: SpectralOptimizer, params: list[Tensor], before: list[Tensor], exact: _ExactAurora
) -> dict[str, float]:
    """Row error, ⟨M, U⟩/‖M‖_*, mean ‖U_i‖²·m/n and the distance ‖U − U*‖_F/‖U*‖_F to exact Aurora
    (:func:`exact_aurora`) of the last step's directions (worst over the matrices; the row error, row
    share and distance over the non-square ones, the distance also averaged)."""
    group = optimizer.param_groups[0]
    row_errors, alignments, row_shares, distances = [], [], [], []
    for index, (p, old) in enumerate(zip(params, before)):
        m, n = p.shape
        U = (old - p.detach()).double() / math.sqrt(max(1.0, m / n))
        buf = optimizer.state[p]["momentum_buffer"]
        M = lookahead_momentum(p.grad, buf, group["momentum"], group["nesterov"]).double()
        alignments.append(float((M * U).sum() / torch.linalg.svdvals(M).sum()))
        if m == n:
            continue
        T = U if m > n else U.mT
        row_errors.append(float(row_uniformity_error(T.unsqueeze(0))))
        row_shares.append(float(T.square().sum() / T.size(-1)))
        U_exact = exact(index, M)
        distances.append(float((U - U_exact).norm() / U_exact.norm()))
    return {
        "row_error": max(row_errors, default=0.0),
        "alignment_min": min(alignments),
        "row_share_min": min(row_shares, default=1.0),
        "aurora_distance_mean": statistics.fmean(distances) if distances else 0.0,
        "aurora_distance_max": max(distances, default=0.0),
    }


def _state_floats_per_param(optimizer: SpectralOptimizer, params: list[Tensor]) -> float:
    """Optimizer state (all tensors, momentum included) in numbers per parameter entry."""
    numbers = sum(t.numel() for p in params for t in optimizer.state[p].values() if isinstance(t, Tensor))
    return numbers / sum(p.numel() for p in params)


def measure(
    shapes: list[tuple[int, int]],
    *,
    polar: str,
    device: torch.device,
    repeats: int,
    warmup: int,
    min_seconds: float = 0.0,
    max_repeats: int = 50,
    seed: int = 0,
    recorded: Recording | None = None,
) -> dict[str, dict[str, float]]:
    """Interleaved timings, accuracy, state and peak memory per optimizer.

    Round robin over the optimizers, ``warmup`` untimed rounds, then at least ``repeats`` timed
    rounds, more (up to ``max_repeats``) until Muon has run ``min_seconds`` in all. Every round
    gives all optimizers the same fresh gradient (each matrix's first gradient plus new noise), so
    the momentum drifts as in training and warm starts are not handed a converged problem. With
    ``recorded``, the matrices, their momentum buffers and one round's gradients each come from
    training instead (``shapes`` is then ignored), as many rounds as were recorded. The ratio uses
    the fastest step of each optimizer (load from other processes only ever adds time); the median
    is reported beside it.
    """
    if recorded is not None:
        shapes = [tuple(g.shape) for g in recorded.gradients[0]]
    runs = {name: _make(name, shapes, polar, device, seed) for name in OPTIMIZERS}
    if recorded is not None:
        for optimizer, params in runs.values():
            start_from(optimizer, params, recorded)
    if recorded is not None:
        rounds: Iterator[list[Tensor]] = iter(recorded.gradients)
    else:
        rounds = drifting_gradients([p.grad.clone() for p in runs["muon"][1]], device, seed)
    times: dict[str, list[float]] = {name: [] for name in runs}
    before: dict[str, list[Tensor]] = {}
    r = 0
    while (
        r < len(recorded.gradients)
        if recorded is not None
        else r < warmup + repeats or (sum(times["muon"]) < min_seconds and r < warmup + max_repeats)
    ):
        r += 1
        gradients = next(rounds)
        for name, (optimizer, params) in runs.items():
            for p, gradient in zip(params, gradients):
                p.grad.copy_(gradient)
            before[name] = [p.detach().clone() for p in params]
            _sync(device)
            start = time.perf_counter()
            optimizer.step()
            _sync(device)
            if r > warmup:
                times[name].append(time.perf_counter() - start)
    largest = max(p.numel() * p.element_size() for p in runs["muon"][1])
    exact = _ExactAurora()
    results: dict[str, dict[str, float]] = {}
    for name, (optimizer, params) in runs.items():
        entry = {
            "seconds": min(times[name]),
            "median_seconds": statistics.median(times[name]),
            "timed_steps": len(times[name]),
            **_accuracy(optimizer, params, before[name], exact),
        }
        entry["state_floats_per_param"] = _state_floats_per_param(optimizer, params)
        tracker = LiveBytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        with tracker:
            optimizer.step()
        entry["peak_step_bytes"] = tracker.peak
        if device.type == "cuda":
            entry["peak_step_bytes_cuda"] = torch.cuda.max_memory_allocated(device) - baseline
        results[name] = entry
    muon = results["muon"]
    for entry in results.values():
        entry["ratio_to_muon"] = entry["seconds"] / muon["seconds"]
        entry["extra_peak_over_muon_in_largest_matrices"] = (
            entry["peak_step_bytes"] - muon["peak_step_bytes"]
        ) / largest
    return results


@dataclass
class Recording:
    """What a training run hands the benchmark: its spectral matrices' momentum buffers at one step
    and their gradients at that step and the next ones (one list per step), in ``nn.Linear`` layout."""

    momentum_buffers: list[Tensor]
    gradients: list[list[Tensor]]
    description: str


def start_from(optimizer: SpectralOptimizer, params: list[Tensor], recorded: Recording) -> None:
    """Create the optimizer's state (every parameter has a gradient) with the recorded momentum buffers."""
    optimizer._init_group()
    for p, buffer in zip(params, recorded.momentum_buffers):
        optimizer.state[p]["momentum_buffer"].copy_(buffer)


def record_training(
    d_model: int, layers: int, expansion: int, *, steps: int, rounds: int, device: torch.device, seed: int = 0
) -> Recording:
    """Train the SwiGLU GPT of ``aurora-opt compare`` at this size with Muon (lr 0.02, batch 16 of 64
    bytes from the standard library's source, nothing downloaded) for ``steps`` steps, then record
    its momentum buffers and the gradients of the next ``rounds`` steps, training on. The leverage of
    a trained network's momenta moves more from step to step than that of the synthetic drift, so
    Aurora's warm-started balancing needs more Gram steps (see :func:`gram_steps_per_matrix`)."""
    torch.manual_seed(seed)
    config = GPTConfig(d_model=d_model, n_layer=layers, mlp_expansion=expansion)
    model = GPT(config).to(device)
    groups = model.param_groups()
    optimizer = Muon(groups, lr=0.02)
    matrices = [p for group in groups if group.get("algorithm") != ADAMW for p in group["params"]]
    tokens = stdlib_prefix(TRAINING_TEXT_BYTES)
    generator = torch.Generator().manual_seed(seed)
    buffers: list[Tensor] = []
    gradients: list[list[Tensor]] = []
    for step in range(steps + rounds):
        inputs, targets = get_batch(tokens, 16, config.seq_len, generator)
        model(inputs.to(device), targets.to(device)).backward()
        if step == steps:
            buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in matrices]
        if step >= steps:
            gradients.append([p.grad.clone() for p in matrices])
        optimizer.step()
        optimizer.zero_grad()
    description = (
        f"momenta of a GPT d={d_model} L={layers} e={expansion} trained by Muon, steps {steps}–{steps + rounds - 1}"
    )
    return Recording(buffers, gradients, description)


class BatchCounter(TorchDispatchMode):
    """Counts the matrices that one op is applied to (its first argument's batch size), e.g. the
    triangular solves of Aurora's Gram balancing steps."""

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.op = op
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is self.op:
            self.count += math.prod(args[0].shape[:-2])
        return func(*args, **(kwargs or {}))


def drifting_gradients(signals: list[Tensor], device: torch.device, seed: int) -> Iterator[list[Tensor]]:
    """Each round's gradients: every matrix's first gradient (``signals``) plus new noise."""
    noise = torch.Generator().manual_seed(seed + 1)
    while True:
        yield [signal + synthetic_gradient(tuple(signal.shape), noise, device) for signal in signals]


def synthetic_recording(
    shapes: list[tuple[int, int]], *, rounds: int, device: torch.device, seed: int = 0
) -> Recording:
    """The gradients :func:`measure` feeds its first ``rounds`` rounds (zero momentum at the start)."""
    signals = [p.grad for p in _make("muon", shapes, DEFAULT_POLAR, device, seed)[1]]
    gradients = list(itertools.islice(drifting_gradients(signals, device, seed), rounds))
    return Recording([torch.zeros_like(signal) for signal in signals], gradients, "synthetic")


def gram_steps_per_matrix(recorded: Recording, *, polar: str, warm_start: bool) -> float:
    """Fast Aurora's Gram balancing steps per non-square matrix and optimizer step over the recorded
    rounds: one triangular solve per Gram step and matrix (the Cholesky factorization before it may be
    retried, and always is once without host synchronization). The polar factor is computed directly:
    the reduced one solves triangular systems of its own (CholeskyQR's second pass), and the balancing
    takes the same steps either way."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in recorded.gradients[0]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = Aurora(params, lr=1.0, weight_decay=0.0, polar=polar, warm_start=warm_start, polar_reduction=None)
    start_from(optimizer, params, recorded)
    counter = BatchCounter(torch.ops.aten.linalg_solve_triangular)
    for gradients in recorded.gradients:
        for p, gradient in zip(params, gradients):
            p.grad.copy_(gradient)
        with counter:
            optimizer.step()
    non_square = sum(1 for p in params if p.size(0) != p.size(1))
    return counter.count / max(1, non_square * len(recorded.gradients))


def warm_start_study(shape: tuple[int, int], *, polar: str, device: torch.device, steps: int = 30) -> dict[str, Any]:
    """Row error of fast Aurora on a drifting momentum (μ = 0.95, fresh noise each step around a
    fixed low-rank signal), 1–3 Gram steps, with and without the warm start; max over steps 5+."""
    generator = torch.Generator().manual_seed(1)
    m, n = shape
    signal = synthetic_gradient(shape, generator, device)
    buffer = torch.zeros(shape, device=device)
    momenta = []
    for _ in range(steps):
        grad = signal + synthetic_gradient(shape, generator, device)
        buffer.lerp_(grad, 0.05)
        momenta.append(grad.lerp(buffer, 0.95))
    orthogonalize = get_polar(polar)
    table: dict[str, Any] = {}
    for gram_steps in (1, 2, 3):
        for warm in (False, True):
            scaling, errors = None, []
            for M in momenta:
                X = (M if m >= n else M.mT).unsqueeze(0).float()
                U, r = balanced_polar(
                    X, orthogonalize=orthogonalize, steps=gram_steps, beta=None, eps=1e-7, scaling=scaling
                )
                scaling = r if warm else None
                errors.append(float(row_uniformity_error(U)))
            table[f"steps={gram_steps},warm={warm}"] = {"first": errors[0], "max_after_5": max(errors[5:])}
    return {"shape": list(shape), "table": table}


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores), {torch.get_num_threads()} "
        f"intra-op thread(s), "
        f"torch {torch.__version__}, {platform.system()}"
    )


def _format_table(rows: list[tuple[str, dict[str, dict[str, float]]]]) -> list[str]:
    lines = [
        "| shape | optimizer | ms | × Muon | row error | ⟨M,U⟩/‖M‖_* | distance to exact Aurora "
        "| state floats/param | extra peak (largest matrices) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, results in rows:
        for name, e in results.items():
            lines.append(
                f"| {label} | {name} | {1e3 * e['seconds']:.2f} | {e['ratio_to_muon']:.2f} | {e['row_error']:.1e} "
                f"| {e['alignment_min']:.4f} | {e['aurora_distance_mean']:.1e} | {e['state_floats_per_param']:.3f} "
                f"| {e['extra_peak_over_muon_in_largest_matrices']:+.2f} |"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    rows = [(f"{m}×{n}", r) for (m, n), r in zip(report["shapes"], report["per_shape"])]
    rows.append((report["model"]["label"], report["model"]["results"]))
    if report.get("training"):
        rows.append(
            (
                f"{report['training']['label']} ({len(report['training']['shapes'])} matrices)",
                report["training"]["results"],
            )
        )
    aurora, muon = REDUCED_PAIR
    reduced = [
        f"{label}: {results[aurora]['seconds'] / results[muon]['seconds']:.2f}×"
        for label, results in rows
        if aurora in results and muon in results
    ]
    lines = [
        f"Machine: {report['machine']}. Polar backend: `{report['polar']}`. Interleaved round robin, "
        f"{report['warmup']} warm-up round(s), then ≥ {report['repeats']} timed rounds (more for fast shapes); "
        "ms = fastest step, × Muon = ratio of fastest steps; row error = max_i |‖U_i‖²/mean_j ‖U_j‖² − 1| "
        "and ⟨M,U⟩/‖M‖_* of the last step (worst matrix); distance to exact Aurora = ‖U − U*‖_F/‖U*‖_F, U* "
        "the float64 SVD polar factor of D·M with D balanced to 1e-12, mean over the non-square matrices; "
        "extra peak = peak memory allocated during a step "
        "minus Muon's, in units of the largest matrix.",
        "",
        *_format_table(rows),
        "",
        f'`{aurora}` over `{muon}` (Muon with `polar_reduction="qr"`; Aurora reduces by default where its '
        "polar factor runs in fp32 and the short side is at least 160): " + "; ".join(reduced) + ".",
        "",
        "Fast Aurora's Gram balancing steps per non-square matrix and optimizer step on the GPT's momenta "
        "(untimed replay; the warm start begins each step from the last step's balanced rows):",
        "",
        "| gradients | rounds | warm start | cold start |",
        "|---|---|---|---|",
        *(
            f"| {name} | {g['rounds']} | {g['warm_start']:.2f} | {g['cold_start']:.2f} |"
            for name, g in report["gram_steps"].items()
        ),
        "",
        f"Warm start of the Gram balancing ({report['warm_start']['shape'][0]}×{report['warm_start']['shape'][1]}, "
        "row error of fast Aurora on a drifting momentum):",
        "",
        "| Gram steps | warm start | first step | max over steps ≥ 5 |",
        "|---|---|---|---|",
    ]
    for key, value in report["warm_start"]["table"].items():
        steps, warm = (part.split("=")[1] for part in key.split(","))
        lines.append(f"| {steps} | {warm} | {value['first']:.1e} | {value['max_after_5']:.1e} |")
    if "provenance" in report:
        p = report["provenance"]
        lines += [
            "",
            f"Code: aurora-opt {p['version']}, commit {commit_label(p)}; `{p['command']}`; CPU {p['machine']['cpu']}; "
            f"{p['utc']}.",
        ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by ``aurora-opt bench`` and ``python -m aurora_opt.bench``)."""
    parser.add_argument("--out", type=Path, default=Path("benchmarks"), help="directory for bench.json and bench.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--polar", default=DEFAULT_POLAR, help="polar backend shared by every optimizer")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per optimizer, at least")
    parser.add_argument(
        "--min-seconds", type=float, default=2.0, help="repeat (up to 50 steps) until Muon has run this long"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per optimizer first")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads (0: torch's default). 1 by default: on a shared 2-core machine under "
        "load, 2 threads made a 384×96 polar factor 350× slower (every op waits for both threads) and "
        "swamped the ratios",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=60,
        help="Muon steps of the GPT before its momenta are recorded for the training-momenta row (0: no such row)",
    )
    parser.add_argument(
        "--train-rounds", type=int, default=10, help="recorded training steps replayed (warm-up rounds included)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and model, for a smoke test")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; write bench.json and bench.md under ``args.out``."""
    device = torch.device(args.device)
    if args.train_steps < 0 or args.train_rounds < 1:
        raise SystemExit("--train-steps must be ≥ 0 and --train-rounds ≥ 1")
    train_steps, train_rounds = args.train_steps, args.train_rounds
    if args.quick:
        shapes, d_model, layers, repeats, warmup, min_seconds = QUICK_SHAPES, 16, 1, 1, 0, 0.0
        train_steps, train_rounds = min(train_steps, 2), 2
    else:
        shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
        d_model, layers, repeats, warmup, min_seconds = (
            args.d_model,
            args.layers,
            args.repeats,
            args.warmup,
            args.min_seconds,
        )
    torch.set_flush_denormal(True)
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    model_shapes = gpt_shapes(d_model, layers, args.expansion)
    measure_kwargs = dict(polar=args.polar, device=device, repeats=repeats, warmup=warmup, min_seconds=min_seconds)
    per_shape = []
    for shape in shapes:
        per_shape.append(measure([shape], **measure_kwargs))
        print(f"{shape}: " + ", ".join(f"{k} {v['ratio_to_muon']:.2f}×" for k, v in per_shape[-1].items()), flush=True)
    label = f"GPT d={d_model} L={layers} e={args.expansion} ({len(model_shapes)} matrices)"
    model = measure(model_shapes, **measure_kwargs)
    print(f"{label}: " + ", ".join(f"{k} {v['ratio_to_muon']:.2f}×" for k, v in model.items()), flush=True)
    training = None
    if train_steps > 0:
        recording = record_training(
            d_model, layers, args.expansion, steps=train_steps, rounds=train_rounds, device=device
        )
        results = measure([], **{**measure_kwargs, "warmup": min(warmup, train_rounds - 1)}, recorded=recording)
        training = {
            "label": recording.description,
            "shapes": [list(g.shape) for g in recording.gradients[0]],
            "train_steps": train_steps,
            "rounds": train_rounds,
            "results": results,
        }
        print(f"{recording.description}: " + ", ".join(f"{k} {v['ratio_to_muon']:.2f}×" for k, v in results.items()))
    recordings = {"synthetic": synthetic_recording(model_shapes, rounds=warmup + repeats, device=device)}
    if training is not None:
        recordings["training"] = recording
    gram_steps = {
        name: {
            "warm_start": gram_steps_per_matrix(rec, polar=args.polar, warm_start=True),
            "cold_start": gram_steps_per_matrix(rec, polar=args.polar, warm_start=False),
            "rounds": len(rec.gradients),
        }
        for name, rec in recordings.items()
    }
    warm_shape = (4 * d_model, d_model)
    report = {
        "provenance": provenance(device, getattr(args, "command_line", None)),
        "machine": machine_description(device),
        "device": device.type,
        "polar": args.polar,
        "repeats": repeats,
        "warmup": warmup,
        "shapes": [list(s) for s in shapes],
        "per_shape": per_shape,
        "model": {"label": label, "shapes": [list(s) for s in model_shapes], "results": model},
        "training": training,
        "gram_steps": gram_steps,
        "warm_start": warm_start_study(warm_shape, polar=args.polar, device=device),
    }
    write_result(args.out, "bench", report, markdown(report))
    print(markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aurora-opt bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return run(parser.parse_args(argv, argparse.Namespace(command_line=["python", "-m", "aurora_opt.bench", *argv])))


if __name__ == "__main__":
    raise SystemExit(main())
