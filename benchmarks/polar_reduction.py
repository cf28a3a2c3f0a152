"""Time of the polar factor with and without ``polar_reduction="qr"``, per shape (the aspect limit).

For each m×n shape a Gaussian matrix (the time does not depend on its values) is orthogonalized by
Polar Express in fp32 directly and as Q·polar(R) (:func:`aurora_opt.polar.qr_reduced`), the two
interleaved in one process, one intra-op thread, ``--repeats`` rounds after one warm-up; the ratio is
of the fastest calls (the medians beside). ``QR_REDUCTION_MIN_ASPECT`` is set from this table.

    PYTHONPATH=src python benchmarks/polar_reduction.py --out benchmarks/cpu [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import aurora_opt.polar
from aurora_opt.bench import machine_description
from aurora_opt.polar import make_orthogonalizer
from aurora_opt.provenance import code_line, provenance, write_result

SHAPES = [(320, 256), (384, 256), (448, 256), (512, 256), (768, 256), (1024, 256), (1024, 512), (2048, 512)]
QUICK_SHAPES = [(24, 16), (64, 16)]


def time_shape(shape: tuple[int, int], repeats: int, seed: int) -> dict[str, Any]:
    X = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
    calls = {
        reduction or "direct": make_orthogonalizer(
            "polar_express", steps=None, eps=1e-7, dtype=None, reduction=reduction
        )
        for reduction in (None, "qr")
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call(X)
            if round_ > 0:
                times[name].append(time.perf_counter() - start)
    entry: dict[str, Any] = {"shape": list(shape)}
    for name, t in times.items():
        entry[name] = {"min_ms": 1e3 * min(t), "median_ms": 1e3 * statistics.median(t)}
    entry["ratio_min"] = entry["qr"]["min_ms"] / entry["direct"]["min_ms"]
    entry["ratio_median"] = entry["qr"]["median_ms"] / entry["direct"]["median_ms"]
    return entry


def markdown(report: dict[str, Any]) -> str:
    p = report["provenance"]
    lines = [
        f'Machine: {report["machine"]}. Polar Express in fp32, direct against Q·polar(R) (`polar_reduction="qr"`), '
        f"interleaved, {report['repeats']} rounds after one warm-up; ms = fastest call (median in brackets).",
        "",
        "| shape | m/n | direct ms | qr ms | qr / direct (medians) |",
        "|---|---|---|---|---|",
    ]
    for e in report["shapes"]:
        m, n = e["shape"]
        lines.append(
            f"| {m}×{n} | {m / n:.2f} | {e['direct']['min_ms']:.2f} ({e['direct']['median_ms']:.2f}) "
            f"| {e['qr']['min_ms']:.2f} ({e['qr']['median_ms']:.2f}) | {e['ratio_min']:.2f} ({e['ratio_median']:.2f}) |"
        )
    lines += ["", code_line(p)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("polar-reduction"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two small shapes: a smoke test")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(1)
    aurora_opt.polar.QR_REDUCTION_MIN_ASPECT = 1  # every shape reduced, below the limit too
    device = torch.device("cpu")
    command = ["python", "benchmarks/polar_reduction.py", *(sys.argv[1:] if argv is None else argv)]
    report: dict[str, Any] = {
        "provenance": provenance(device, command),
        "machine": machine_description(device),
        "repeats": args.repeats,
        "shapes": [],
    }
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        report["shapes"].append(time_shape(shape, args.repeats, args.seed))
        e = report["shapes"][-1]
        print(f"{shape[0]}×{shape[1]}: qr/direct {e['ratio_min']:.2f} (medians {e['ratio_median']:.2f})", flush=True)
    write_result(args.out, "polar_reduction", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
