"""Accuracy of the bf16 polar factor with and without ``polar_reduction="qr"`` (CPU, bf16 matmuls).

Polar Express in bf16, relative Frobenius error against the float64 SVD polar factor, three ways:
directly on the matrix; as Q·polar(Rᵀ)ᵀ (:func:`aurora_opt.polar.qr_reduced`, the iteration's Gram
matrix RᵀR = XᵀX); and, for the record, as Q·polar(R) (Gram matrix RRᵀ), how the reduction first ran.
Three families of matrices:

- ``sigma``: Haar-random singular vectors, σ log-spaced over one decade;
- ``rows``: Gaussian entries, rows scaled log-uniformly over two decades;
- ``drifting``: ``benchmarks/gpu.py``'s drifting gradient (a rank-n/16 signal times row scales over two
  decades, plus fresh noise), 12 signals × 40 draws per shape. Its small matrices are where bf16
  iterations flip the sign of a weak direction (an error of 2/√n): the count of errors above 0.25 is
  reported with the quantiles.

    PYTHONPATH=src python benchmarks/qr_bf16.py --out benchmarks/cpu [--quick]
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

from aurora_opt.bench import machine_description
from aurora_opt.polar import cholesky_qr, make_orthogonalizer, polar_express, scaled_to_unit_max, svd_polar, tall
from aurora_opt.provenance import code_line, provenance, write_result
from gpu import DriftingGradient

#: (family, shape, matrices); ``drifting`` matrices are signals × draws
CASES = [
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
QUICK_CASES = [("sigma", (64, 16), 2), ("rows", (64, 16), 1), ("drifting", (16, 48), (2, 3))]
#: an error above this counts as a flipped direction (2/√n is 0.5 at n = 16, 0.35 at n = 32)
FLIP_THRESHOLD = 0.25


def matrices(family: str, shape: tuple[int, int], count) -> list[Tensor]:
    m, n = shape
    if family == "drifting":
        signals, draws = count
        out = []
        for signal in range(signals):
            gradient = DriftingGradient(shape, torch.device("cpu"), seed=signal)
            out += [gradient() for _ in range(draws)]
        return out
    out = []
    for seed in range(count):
        g = torch.Generator().manual_seed(seed)
        if family == "sigma":
            U = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64)).Q
            V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
            out.append(((U * torch.logspace(0, -1, n, dtype=torch.float64)) @ V.mT).float())
        else:
            scales = torch.logspace(-1, 1, m)[torch.randperm(m, generator=g)]
            out.append(torch.randn(m, n, generator=g) * scales[:, None])
    return out


def reduced_on_r(X: Tensor) -> Tensor:
    """Q·polar(R) with the bf16 iteration on R itself (its Gram matrix RRᵀ): the ablation."""
    Y, transposed = tall(X)
    Q, R = cholesky_qr(scaled_to_unit_max(Y.float()))
    U = Q @ polar_express(R.bfloat16()).float()
    return U.mT if transposed else U


def measure(family: str, shape: tuple[int, int], count) -> dict[str, Any]:
    ways: dict[str, Callable[[Tensor], Tensor]] = {
        "direct": make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.bfloat16),
        "qr": make_orthogonalizer("polar_express", steps=None, eps=1e-7, dtype=torch.bfloat16, reduction="qr"),
        "qr_on_R": reduced_on_r,
    }
    errors: dict[str, list[float]] = {name: [] for name in ways}
    for X in matrices(family, shape, count):
        exact = svd_polar(X.double())
        for name, way in ways.items():
            errors[name].append(float((way(X).double() - exact).norm() / exact.norm()))
    entry: dict[str, Any] = {"family": family, "shape": list(shape), "matrices": len(errors["direct"])}
    for name, e in errors.items():
        entry[name] = {
            "min": min(e),
            "median": statistics.median(e),
            "p99": torch.tensor(e).quantile(0.99).item(),
            "max": max(e),
            "above_flip_threshold": sum(x > FLIP_THRESHOLD for x in e),
        }
    return entry


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Machine: {report['machine']}. Polar Express in bf16 (bf16 matmuls), relative error against the "
        "float64 SVD polar factor: median [min–max] over the matrices, and how many exceeded "
        f'{FLIP_THRESHOLD} (a weak direction\'s sign flipped). `qr` is `polar_reduction="qr"`, the '
        "iteration on Rᵀ; `qr on R` the same with the iteration on R.",
        "",
        "| family | shape | matrices | direct | qr | qr on R |",
        "|---|---|---|---|---|---|",
    ]
    for e in report["cases"]:
        m, n = e["shape"]
        cells = [
            f"{e[w]['median']:.1e} [{e[w]['min']:.1e}–{e[w]['max']:.1e}], {e[w]['above_flip_threshold']} > {FLIP_THRESHOLD}"
            for w in ("direct", "qr", "qr_on_R")
        ]
        lines.append(f"| {e['family']} | {m}×{n} | {e['matrices']} | " + " | ".join(cells) + " |")
    lines += ["", code_line(report["provenance"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("qr-bf16"))
    parser.add_argument("--quick", action="store_true", help="three small cases: a smoke test")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    command = ["python", "benchmarks/qr_bf16.py", *(sys.argv[1:] if argv is None else argv)]
    report: dict[str, Any] = {"provenance": provenance(device, command), "machine": machine_description(device)}
    report["cases"] = []
    for family, shape, count in QUICK_CASES if args.quick else CASES:
        e = measure(family, shape, count)
        report["cases"].append(e)
        print(
            f"{family} {shape[0]}×{shape[1]}: "
            + ", ".join(f"{w} {e[w]['median']:.1e} (max {e[w]['max']:.1e})" for w in ("direct", "qr", "qr_on_R")),
            flush=True,
        )
    write_result(args.out, "qr_bf16", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
