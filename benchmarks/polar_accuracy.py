"""Accuracy of the polar-factor backends on the CPU: relative Frobenius error against the float64 SVD.

Sections:

- ``backends``: every iterative backend at its default step count, in fp32 and in bf16 (bf16 matmuls,
  fp32 accumulation), on four 512×128 matrices with Haar-random singular vectors and σ log-spaced
  over two decades;
- ``qr``: Polar Express in bf16 directly, as Q·polar(Rᵀ)ᵀ (``polar_reduction="qr"``, the iteration's
  Gram matrix RᵀR = XᵀX) and, for the record, as Q·polar(R) (Gram matrix RRᵀ), how the reduction first
  ran. Families: ``sigma`` (σ over one decade), ``rows`` (Gaussian entries, rows scaled over two
  decades) and ``drifting`` (``benchmarks/gpu.py``'s drifting gradient: a rank-n/16 signal times row
  scales over two decades plus fresh noise, 12 signals × 40 draws per shape). On the small drifting
  matrices bf16 iterations now and then flip the sign of a weak direction (an error of 2/√n); the
  count of errors above 0.25 is reported;
- ``trained``: Polar Express in fp32, directly and reduced, on Aurora's balanced D·M of the momenta
  recorded from training the bench's GPT with Muon (:func:`aurora_opt.bench.record_training`), the
  matrices at least twice as tall as wide, by condition number.

    PYTHONPATH=src python benchmarks/polar_accuracy.py --out benchmarks/cpu [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aurora_opt.bench import machine_description, record_training
from aurora_opt.matrices import tall
from aurora_opt.optim.aurora import balanced_polar
from aurora_opt.polar import (
    POLAR_BACKENDS,
    cholesky_qr,
    make_orthogonalizer,
    polar_express,
    reducible,
    scaled_to_unit_max,
    svd_polar,
)
from aurora_opt.provenance import code_line, provenance, write_result
from gpu import DriftingGradient

ITERATIVE_BACKENDS = ("polar_express", "simple_quintic", "newton_schulz")
#: the ``backends`` section: shape, matrices
BACKEND_MATRICES = ((512, 128), 4)
QUICK_BACKEND_MATRICES = ((64, 16), 2)
#: the ``qr`` section: (family, shape, matrices); ``drifting`` matrices are signals × draws
QR_CASES = [
    ("sigma", (64, 16), 6),
    ("sigma", (256, 64), 6),
    ("sigma", (1024, 256), 6),
    ("rows", (1024, 256), 2),
    ("rows", (3072, 768), 2),
    ("drifting", (48, 16), (12, 40)),
    ("drifting", (16, 48), (12, 40)),
    ("drifting", (96, 32), (12, 40)),
    ("drifting", (32, 96), (12, 40)),
]
QUICK_QR_CASES = [("sigma", (64, 16), 2), ("rows", (64, 16), 1), ("drifting", (16, 48), (2, 3))]
#: the ``trained`` section: the bench GPT (d_model, layers, expansion) and the Muon steps before recording
TRAINED = ((256, 4, 4), 60)
QUICK_TRAINED = ((16, 1, 4), 2)
#: an error above this counts as a flipped direction (2/√n is 0.5 at n = 16, 0.35 at n = 32)
FLIP_THRESHOLD = 0.25
#: Aurora's balancing for the ``trained`` section: to 1e-6, far below what the backends resolve
BALANCE_TOLERANCE = 1e-6


def spread_singular_values(shape: tuple[int, int], seed: int, decades: float) -> Tensor:
    """fp32 m×n matrix with Haar-random singular vectors and σ log-spaced from 1 down to 10^-decades."""
    m, n = shape
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    return ((U * torch.logspace(0, -decades, n, dtype=torch.float64)) @ V.mT).float()


def family(name: str, shape: tuple[int, int], count) -> list[Tensor]:
    if name == "sigma":
        return [spread_singular_values(shape, seed, 1.0) for seed in range(count)]
    if name == "rows":
        out = []
        for seed in range(count):
            g = torch.Generator().manual_seed(seed)
            scales = torch.logspace(-1, 1, shape[0])[torch.randperm(shape[0], generator=g)]
            out.append(torch.randn(*shape, generator=g) * scales[:, None])
        return out
    signals, draws = count
    out = []
    for signal in range(signals):
        gradient = DriftingGradient(shape, torch.device("cpu"), seed=signal)
        out += [gradient() for _ in range(draws)]
    return out


def relative_error(U: Tensor, exact: Tensor) -> float:
    return float((U.double() - exact).norm() / exact.norm())


def summarized(errors: list[float]) -> dict[str, Any]:
    return {
        "min": min(errors),
        "median": statistics.median(errors),
        "max": max(errors),
        "above_flip_threshold": sum(e > FLIP_THRESHOLD for e in errors),
    }


def bench_backends(shape: tuple[int, int], count: int) -> dict[str, Any]:
    errors: dict[str, list[float]] = {}
    for seed in range(count):
        X = spread_singular_values(shape, seed, 2.0)
        exact = svd_polar(X.double())
        for backend in ITERATIVE_BACKENDS:
            for dtype in (torch.float32, torch.bfloat16):
                U = POLAR_BACKENDS[backend](X.to(dtype))
                errors.setdefault(f"{backend}/{str(dtype).removeprefix('torch.')}", []).append(relative_error(U, exact))
    return {"shape": list(shape), "matrices": count, "errors": {k: summarized(v) for k, v in errors.items()}}


def reduced_on_r(X: Tensor) -> Tensor:
    """Q·polar(R) with the bf16 iteration on R itself (its Gram matrix RRᵀ): the ablation."""
    Y, transposed = tall(X)
    Q, R = cholesky_qr(scaled_to_unit_max(Y.float()))
    U = Q @ polar_express(R.bfloat16()).float()
    return U.mT if transposed else U


def bench_qr(name: str, shape: tuple[int, int], count) -> dict[str, Any]:
    ways: dict[str, Callable[[Tensor], Tensor]] = {
        "direct": make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.bfloat16),
        "qr": make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.bfloat16, reduction="qr"),
        "qr_on_R": reduced_on_r,
    }
    errors: dict[str, list[float]] = {way: [] for way in ways}
    for X in family(name, shape, count):
        exact = svd_polar(X.double())
        for way, orthogonalize in ways.items():
            errors[way].append(relative_error(orthogonalize(X), exact))
    entry: dict[str, Any] = {"family": name, "shape": list(shape), "matrices": len(errors["direct"])}
    entry.update({way: summarized(e) for way, e in errors.items()})
    return entry


def bench_trained(size: tuple[int, int, int], steps: int) -> dict[str, Any]:
    recording = record_training(*size, steps=steps, rounds=1, device=torch.device("cpu"))
    direct = make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.float32)
    reduced = make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.float32, reduction="qr")
    matrices = []
    for M in recording.momentum_buffers:
        X, _ = tall(M.float().unsqueeze(0))
        if not reducible(X.shape):
            continue
        _, r = balanced_polar(X, orthogonalize=svd_polar, steps=50, beta=None, eps=1e-7, tolerance=BALANCE_TOLERANCE)
        DX = r.unsqueeze(-1) / X.norm(dim=-1, keepdim=True) * X
        S = torch.linalg.svdvals(DX.double())
        exact = svd_polar(DX.double())
        matrices.append(
            {
                "shape": list(M.shape),
                "condition": float(S[..., 0] / S[..., -1]),
                "direct": relative_error(direct(DX), exact),
                "qr": relative_error(reduced(DX), exact),
            }
        )
    matrices.sort(key=lambda e: e["condition"])
    return {"label": recording.description, "matrices": matrices}


def markdown(report: dict[str, Any]) -> str:
    backends = report["backends"]
    m, n = backends["shape"]
    lines = [
        f"Machine: {report['machine']}. Relative error ‖U − polar(G)‖_F/‖polar(G)‖_F against the float64 SVD "
        "polar factor; bf16 = bf16 matmuls with fp32 accumulation.",
        "",
        f"**Backends** at their default step counts, {backends['matrices']} {m}×{n} matrices with σ log-spaced "
        "over two decades: median [max].",
        "",
        "| backend | fp32 | bf16 |",
        "|---|---|---|",
    ]
    for backend in ITERATIVE_BACKENDS:
        cells = [backends["errors"][f"{backend}/{dtype}"] for dtype in ("float32", "bfloat16")]
        lines.append(f"| `{backend}` | " + " | ".join(f"{c['median']:.1e} [{c['max']:.1e}]" for c in cells) + " |")
    lines += [
        "",
        f"**Polar Express in bf16, reduced or not**: median [min–max] over the matrices, and how many exceeded "
        f'{FLIP_THRESHOLD} (a weak direction\'s sign flipped). `qr` is `polar_reduction="qr"`, the iteration '
        "on Rᵀ; `qr on R` the same with the iteration on R.",
        "",
        "| family | shape | matrices | direct | qr | qr on R |",
        "|---|---|---|---|---|---|",
    ]
    for e in report["qr"]:
        m, n = e["shape"]
        cells = [
            f"{e[w]['median']:.1e} [{e[w]['min']:.1e}–{e[w]['max']:.1e}], {e[w]['above_flip_threshold']} > {FLIP_THRESHOLD}"
            for w in ("direct", "qr", "qr_on_R")
        ]
        lines.append(f"| {e['family']} | {m}×{n} | {e['matrices']} | " + " | ".join(cells) + " |")
    trained = report["trained"]
    lines += [
        "",
        f"**Polar Express in fp32 on Aurora's balanced D·M** ({trained['label']}; momentum buffers at least "
        "twice as tall as wide, balanced to 1e-6), by condition number κ of D·M:",
        "",
        "| shape | κ | direct | qr |",
        "|---|---|---|---|",
    ]
    for e in trained["matrices"]:
        lines.append(f"| {e['shape'][0]}×{e['shape'][1]} | {e['condition']:.3g} | {e['direct']:.2e} | {e['qr']:.2e} |")
    lines += ["", code_line(report["provenance"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("polar-accuracy"))
    parser.add_argument("--quick", action="store_true", help="small cases of every section: a smoke test")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    command = ["python", "benchmarks/polar_accuracy.py", *(sys.argv[1:] if argv is None else argv)]
    report: dict[str, Any] = {"provenance": provenance(device, command), "machine": machine_description(device)}
    shape, count = QUICK_BACKEND_MATRICES if args.quick else BACKEND_MATRICES
    report["backends"] = bench_backends(shape, count)
    print("backends: " + ", ".join(f"{k} {v['median']:.1e}" for k, v in report["backends"]["errors"].items()))
    report["qr"] = []
    for name, shape, count in QUICK_QR_CASES if args.quick else QR_CASES:
        e = bench_qr(name, shape, count)
        report["qr"].append(e)
        print(
            f"{name} {shape[0]}×{shape[1]}: "
            + ", ".join(f"{w} {e[w]['median']:.1e} (max {e[w]['max']:.1e})" for w in ("direct", "qr", "qr_on_R")),
            flush=True,
        )
    report["trained"] = bench_trained(*(QUICK_TRAINED if args.quick else TRAINED))
    for e in report["trained"]["matrices"]:
        print(f"trained {e['shape']}: κ {e['condition']:.3g}, direct {e['direct']:.2e}, qr {e['qr']:.2e}")
    write_result(args.out, "polar_accuracy", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
