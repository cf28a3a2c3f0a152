"""Riemannian-quality Aurora: objective gap, row error and cost against Muon, as training sees them.

Every step each optimizer gets the same fresh gradient G_t, so its momentum drifts
(b_t = 0.95 b_{t−1} + 0.05 G_t, Nesterov look-ahead as in training). Cases:

- ``gaussian``: one 1024×256 matrix, G_t Gaussian;
- ``dominant_rows``: the same with the first 4 rows of every G_t ×1e3;
- ``gpt``: the hidden matrices of the bench's SwiGLU GPT (``aurora_opt.bench.gpt_shapes``, d 256,
  4 layers, expansion 4); G_t = a fixed signal (``aurora_opt.bench.synthetic_gradient``: low rank,
  row scales over two decades) plus fresh Gaussian noise of the same RMS;
- ``training``: that GPT trained by Muon on the embedded corpus (``aurora_opt.bench.record_training``,
  q/k/v fused into one 768×256 matrix): its momentum buffers after 60 steps, then the gradients of the
  steps after them.

Timing: ``optimizer.step()`` round robin over the optimizers in one process, one intra-op thread,
``--warmup`` untimed steps, then ``--steps`` timed ones; the ratio to Muon is of the medians (the
fastest steps beside). Accuracy at the last step, for every non-square matrix (oriented tall):
gap = (optimum − ⟨M, U⟩)/‖M‖_* with M the momentum the step used (the same for every optimizer),
row error = max_i |‖U_i‖²/mean_j ‖U_j‖² − 1| (the mean is n/m where U is semi-orthogonal; less where M
has directions too small for Polar Express to lift, as the recorded qkv momenta do). The optimum is the dual-Newton scheme run to convergence in
float64 from a cold start (8 Newton steps of 30 CG iterations, 16 iterations per λ_i solve); its own row and orthogonality
errors are reported, and tests/test_aurora_dual.py checks the scheme against a certified optimum.

    PYTHONPATH=src python benchmarks/riemannian_study.py --out benchmarks/cpu
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aurora_opt import Aurora, DualAurora, Muon, RiemannianAurora
from aurora_opt.bench import gpt_shapes, machine_description, record_training, start_from, synthetic_gradient
from aurora_opt.optim import dual_aurora_direction
from aurora_opt.optim.aurora import row_uniformity_error
from aurora_opt.polar import svd_polar
from aurora_opt.provenance import provenance, write_result

OPTIMIZERS: dict[str, tuple[type, dict[str, Any]]] = {
    "muon": (Muon, {}),
    "aurora": (Aurora, {}),
    "dual_aurora": (DualAurora, {}),
    "dual_aurora_newton1": (DualAurora, {"newton_steps": 1}),
    "dual_aurora_newton1_nobalance": (DualAurora, {"newton_steps": 1, "balance_steps": 0}),
    "riemannian_aurora": (RiemannianAurora, {}),
}


#: Muon steps of the GPT before its momenta are recorded for the ``training`` case
TRAINING_STEPS = 60


def gradient_source(case: str, seed: int, rounds: int):
    """(shapes, next_gradients(), recording or None) for a case; each call of next_gradients gives
    the next step's gradients (``rounds`` of them for ``training``, whose recording also holds the
    momentum buffers the optimizers start from)."""
    generator = torch.Generator().manual_seed(seed)
    if case == "training":
        recording = record_training(256, 4, 4, steps=TRAINING_STEPS, rounds=rounds, device=torch.device("cpu"))
        replay = iter(recording.gradients)
        return [tuple(g.shape) for g in recording.gradients[0]], lambda: next(replay), recording
    if case in ("gaussian", "dominant_rows"):
        shapes = [(1024, 256)]
        scale = torch.ones(1024, 1)
        if case == "dominant_rows":
            scale[:4] = 1e3
        return shapes, lambda: [torch.randn(1024, 256, generator=generator) * scale], None
    shapes = gpt_shapes(256, 4, 4)
    signals = [synthetic_gradient(shape, generator, torch.device("cpu")) for shape in shapes]
    rms = [float(s.square().mean().sqrt()) for s in signals]
    return shapes, lambda: [s + r * torch.randn(s.shape, generator=generator) for s, r in zip(signals, rms)], None


def reference_optimum(M: Tensor) -> tuple[Tensor, float, float, bool]:
    """(U*, row error, max |U*ᵀU* − I|, whether the scheme fell back to vanilla Aurora's point) for a
    tall float64 M, by the converged dual scheme; it falls back where the dual is not tight, and U* is
    then no optimum."""
    fallbacks = torch.zeros(1, dtype=M.dtype)
    U = dual_aurora_direction(
        M[None],
        orthogonalize=svd_polar,
        fallbacks=fallbacks,
        balance_steps=10,
        newton_steps=8,
        cg_steps=30,
        row_steps=(16, 16),
    )[0]
    rows = float(row_uniformity_error(U[None]))
    orthogonality = float((U.mT @ U - torch.eye(M.size(-1), dtype=U.dtype)).abs().max())
    return U, rows, orthogonality, bool(fallbacks.item() > 0)


def run_case(case: str, *, steps: int, warmup: int, seed: int) -> dict[str, Any]:
    shapes, next_gradients, recording = gradient_source(case, seed, warmup + steps)
    runs = {}
    for name, (cls, kwargs) in OPTIMIZERS.items():
        params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
        # lr 1 and no weight decay: a step from W = 0 leaves W = −s(m, n)·U
        runs[name] = (cls(params, lr=1.0, weight_decay=0.0, polar="polar_express", **kwargs), params)
        if recording is not None:
            for p in params:
                p.grad = torch.zeros_like(p)
            start_from(runs[name][0], params, recording)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(warmup + steps):
        grads = next_gradients()
        last = step == warmup + steps - 1
        for name, (optimizer, params) in runs.items():
            for p, g in zip(params, grads):
                p.grad = g.clone()
                if last:
                    p.data.zero_()
            start = time.perf_counter()
            optimizer.step()
            elapsed = time.perf_counter() - start
            if step >= warmup:
                times[name].append(elapsed)

    # accuracy at the last step: the Nesterov momentum is the same for every optimizer
    muon_optimizer, muon_params = runs["muon"]
    reference_rows, reference_orthogonality, reference_fallbacks, non_square = 0.0, 0.0, 0, 0
    accuracy: dict[str, dict[str, float]] = {name: {"gap_max": -math.inf, "row_error_max": 0.0} for name in runs}
    gaps: dict[str, list[float]] = {name: [] for name in runs}
    for index, p in enumerate(muon_params):
        m, n = p.shape
        if m == n:
            continue
        buffer = muon_optimizer.state[p]["momentum_buffer"].double()
        M = p.grad.double().lerp(buffer, 0.95)
        M = M if m > n else M.mT
        U_star, rows, orthogonality, fell_back = reference_optimum(M)
        reference_fallbacks += fell_back
        non_square += 1
        reference_rows = max(reference_rows, rows)
        reference_orthogonality = max(reference_orthogonality, orthogonality)
        nuclear = float(torch.linalg.matrix_norm(M, "nuc"))
        optimum = float((M * U_star).sum())
        for name, (_, params) in runs.items():
            U = -params[index].detach().double() / math.sqrt(max(1.0, m / n))
            U = U if m > n else U.mT
            entry = accuracy[name]
            gaps[name].append((optimum - float((M * U).sum())) / nuclear)
            entry["gap_max"] = max(entry["gap_max"], gaps[name][-1])
            row_error = float(row_uniformity_error(U[None]))
            entry["row_error_max"] = max(entry["row_error_max"], row_error)

    muon_median = statistics.median(times["muon"])
    muon_min = min(times["muon"])
    results: dict[str, Any] = {}
    for name, (optimizer, params) in runs.items():
        median = statistics.median(times[name])
        entry = {
            "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(times[name]),
            "ratio_median": median / muon_median,
            "ratio_min": min(times[name]) / muon_min,
            **accuracy[name],
            "gap_median": statistics.median(gaps[name]),
        }
        if isinstance(optimizer, DualAurora):
            entry["fallbacks"] = optimizer.fallback_count()
        results[name] = entry
    return {
        "shapes": [list(s) for s in shapes],
        "timed_steps": steps,
        "reference_row_error": reference_rows,
        "reference_orthogonality_error": reference_orthogonality,
        "reference_fallbacks": reference_fallbacks,
        "non_square_matrices": non_square,
        "optimizers": results,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Riemannian-quality Aurora: gap, rows and cost (CPU, one thread)",
        "",
        f"Machine: {report['machine']}. Commit {report['provenance']['commit']} "
        f"(dirty: {report['provenance']['dirty']}), {report['provenance']['utc']}. "
        f"Command: `{report['provenance']['command']}`.",
        "",
        "Fresh gradient every step (momentum 0.95, Nesterov); ratio = median step / Muon's median step",
        "(fastest steps in brackets); gap = (optimum − ⟨M, U⟩)/‖M‖_* and row error = max_i |‖U_i‖²/mean_j ‖U_j‖² − 1|",
        "at the last step, worst non-square matrix (median over them in brackets); fallbacks = matrix-steps that got vanilla Aurora's point.",
        "",
    ]
    for case, result in report["cases"].items():
        lines += [
            (
                f"## {case} ({result['timed_steps']} timed steps; reference row error "
                f"{result['reference_row_error']:.1e}, orthogonality {result['reference_orthogonality_error']:.1e}; "
                f"the reference fell back to vanilla Aurora's point, its dual not tight, on "
                f"{result['reference_fallbacks']} of {result['non_square_matrices']} matrices)"
            ),
            "",
            "| optimizer | median ms | × Muon (fastest) | gap (median) | row error | fallbacks |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, e in result["optimizers"].items():
            lines.append(
                f"| {name} | {e['median_ms']:.1f} | {e['ratio_median']:.2f} ({e['ratio_min']:.2f}) | "
                f"{e['gap_max']:.1e} ({e['gap_median']:.1e}) | {e['row_error_max']:.1e} | {e.get('fallbacks', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("riemannian-study"))
    parser.add_argument("--cases", default="gaussian,dominant_rows,gpt,training")
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    command = ["python", "benchmarks/riemannian_study.py", *(sys.argv[1:] if argv is None else argv)]
    report: dict[str, Any] = {
        "provenance": provenance(device, command),
        "machine": machine_description(device),
        "cases": {},
    }
    for case in args.cases.split(","):
        report["cases"][case] = run_case(case, steps=args.steps, warmup=args.warmup, seed=args.seed)
        print(case, json.dumps(report["cases"][case]["optimizers"], indent=1), flush=True)
    write_result(args.out, "riemannian_study", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
