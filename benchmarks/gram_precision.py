"""Accuracy of Aurora's direction with low-precision Gram products (``gram_matmul_dtype``), on the CPU.

Aurora as CUDA runs it (a bf16 Polar Express factor, 2 Gram steps without host synchronization, the
row correction) replays momenta and gradients: those recorded from the bench's GPT trained by Muon,
and the bench's synthetic drift (:mod:`aurora_opt.bench`). Each step's direction U is compared with
exact Aurora of the same momentum (float64, exact SVD polar factor, rows balanced to 1e-12:
:func:`aurora_opt.bench.exact_aurora`):
‖U − U*‖_F/‖U*‖_F, averaged and worst over the steps and non-square matrices, and the worst row error
max_i |‖U_i‖²/mean_j ‖U_j‖² − 1|. Variants: fp32 Gram products (``torch.float32``), bf16 and fp16
inputs with fp32 sums (the CPU computes the same arithmetic as CUDA's tensor cores, slower), and, as
the ablation that motivates the fp32 sums, a Gram matrix rounded to bf16.

    PYTHONPATH=src python benchmarks/gram_precision.py --out benchmarks/cpu [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import aurora_opt.optim.aurora as aurora_module
from aurora_opt import Aurora
from aurora_opt.bench import (
    Recording,
    exact_aurora,
    gpt_shapes,
    machine_description,
    record_training,
    start_from,
    synthetic_recording,
)
from aurora_opt.optim import sync_free
from aurora_opt.optim._spectral import adjust_lr
from aurora_opt.optim.aurora import row_uniformity_error
from aurora_opt.provenance import code_line, provenance, write_result

#: variant → Aurora's gram_matmul_dtype (None: the bf16 Gram matrix ablation, see rounded_gram_matrix)
VARIANTS: dict[str, torch.dtype | None] = {
    "fp32 products": torch.float32,
    "bf16 products, fp32 sums (default)": torch.bfloat16,
    "fp16 products, fp32 sums": torch.float16,
    "bf16 Gram matrix (ablation)": None,
}
MOMENTUM = 0.95  # Aurora's default, with Nesterov


@contextlib.contextmanager
def rounded_gram_matrix() -> Iterator[None]:
    """Gram steps whose bf16 products round their result to bf16 too (plain bf16 matmuls)."""
    real = aurora_module.matmul_fp32
    aurora_module.matmul_fp32 = lambda a, b: (a @ b).float()
    try:
        yield
    finally:
        aurora_module.matmul_fp32 = real


def exact_directions(recorded: Recording) -> list[list[Tensor | None]]:
    """Exact Aurora (:func:`aurora_opt.bench.exact_aurora`) of every round's Nesterov momentum, per
    matrix (None for square ones): the same for every variant, so computed once per recording."""
    buffers = [b.clone() for b in recorded.momentum_buffers]
    directions = []
    for gradients in recorded.gradients:
        row = []
        for buffer, g in zip(buffers, gradients):
            buffer.lerp_(g, 1 - MOMENTUM)  # this step's buffer
            M = g.lerp(buffer, MOMENTUM)  # the Nesterov input of the direction
            row.append(None if M.size(0) == M.size(1) else exact_aurora(M))
        directions.append(row)
    return directions


def replay(recorded: Recording, matmul_dtype: torch.dtype | None, exact: list[list[Tensor | None]]) -> dict[str, float]:
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in recorded.gradients[0]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = Aurora(
        params,
        lr=1.0,
        weight_decay=0.0,
        momentum=MOMENTUM,
        polar_dtype=torch.bfloat16,
        gram_matmul_dtype=matmul_dtype or torch.bfloat16,
    )
    start_from(optimizer, params, recorded)
    distances, row_errors = [], []
    for gradients, exact_round in zip(recorded.gradients, exact):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, gradients):
            p.grad.copy_(g)
        with sync_free(), rounded_gram_matrix() if matmul_dtype is None else contextlib.nullcontext():
            optimizer.step()
        for p, b, U_exact in zip(params, before, exact_round):
            if U_exact is None:
                continue
            m, n = p.shape
            U = (b - p.detach()).double() / float(adjust_lr(1.0, None, m, n))
            distances.append(float((U - U_exact).norm() / U_exact.norm()))
            rows = U if m > n else U.mT
            row_errors.append(float(row_uniformity_error(rows.unsqueeze(0))))
    return {
        "mean_distance": statistics.fmean(distances),
        "max_distance": max(distances),
        "max_row_error": max(row_errors),
        "directions": len(distances),
    }


def markdown(report: dict[str, Any]) -> str:
    p = report["provenance"]
    lines = [
        f"Machine: {report['machine']}. Aurora with a bf16 Polar Express factor, 2 Gram steps without host "
        "synchronization (CUDA's configuration), the row correction; distance ‖U − U*‖_F/‖U*‖_F to exact "
        "float64 Aurora of the same momentum, mean and worst over the steps and non-square matrices.",
        "",
        "| momenta | Gram products | mean distance | worst distance | worst row error | directions |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in report["recordings"].items():
        for variant, r in results.items():
            lines.append(
                f"| {name} | {variant} | {r['mean_distance']:.3e} | {r['max_distance']:.3e} "
                f"| {r['max_row_error']:.1e} | {r['directions']} |"
            )
    lines += ["", code_line(p)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gram-precision"))
    parser.add_argument("--rounds", type=int, default=6, help="optimizer steps replayed per recording")
    parser.add_argument("--quick", action="store_true", help="a one-layer d=32 GPT, 1 round: a smoke test")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    d_model, layers, trained_steps = (32, 1, 3) if args.quick else (256, 4, 60)
    rounds = 1 if args.quick else args.rounds
    recordings = {
        f"trained GPT d={d_model} L={layers}, steps {trained_steps}–{trained_steps + rounds - 1}": record_training(
            d_model, layers, 4, steps=trained_steps, rounds=rounds, device=device
        ),
        "synthetic drift": synthetic_recording(gpt_shapes(d_model, layers, 4), rounds=rounds, device=device),
    }
    command = ["python", "benchmarks/gram_precision.py", *(sys.argv[1:] if argv is None else argv)]
    report: dict[str, Any] = {
        "provenance": provenance(device, command),
        "machine": machine_description(device),
        "recordings": {},
    }
    for name, recorded in recordings.items():
        results = report["recordings"][name] = {}
        exact = exact_directions(recorded)
        for variant, matmul_dtype in VARIANTS.items():
            results[variant] = replay(recorded, matmul_dtype, exact)
            r = results[variant]
            print(f"{name} | {variant}: mean {r['mean_distance']:.3e}, worst {r['max_distance']:.3e}", flush=True)
    write_result(args.out, "gram_precision", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
