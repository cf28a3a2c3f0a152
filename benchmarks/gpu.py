"""GPU benchmark: the cost of Aurora against Muon where people train (bf16 polar factors, CUDA).

Sections (all timings interleaved round robin in one process, a fresh gradient every step: a fixed
low-rank signal with unequal rows plus new Gaussian noise, so the momentum drifts as in training):

- ``polar``: each polar backend × dtype on one matrix: time, and relative error against the float64 SVD
  (Polar Express also as Q·polar(R), ``/qr``);
- ``matrices``: ``optimizer.step()`` on one matrix for GPT-2 124M and 1B/8B-class MLP and attention
  shapes: Muon, NorMuon, U-NorMuon, Aurora (same backend; Aurora also with fp32 Gram steps instead
  of its default bf16 Gram products, with one Gram step instead of two, and with its polar factor
  reduced, ``aurora_qr``), median and fastest step, ratio to Muon, Aurora's row error
  max_i |‖U_i‖²·m/n − 1|, peak memory allocated during the step;
- ``compiled``: the same for a few shapes with ``torch.compile(optimizer.step, fullgraph=True)``;
- ``model``: the whole training step (forward, backward, optimizer) of a 124M SwiGLU GPT under bf16
  autocast, the model compiled: AdamW (torch, fused), Muon and Aurora, eager and compiled steps.

``--polar-reduction qr`` runs every spectral optimizer with ``polar_reduction="qr"`` (the polar factor
of a matrix ≥ 2× taller than wide from its n×n triangular factor; 0.72–1.00× the time at aspect 4–2
on the CPU, unmeasured on a GPU, where the fp32 Cholesky-QR competes with bf16 matmuls); without it
each optimizer keeps its default, and the per-matrix sections time Aurora reduced as ``aurora_qr``.

Writes ``gpu.json`` and ``gpu.md`` to ``--out``. ``--quick --device cpu`` is the smoke test.

    python benchmarks/gpu.py --out benchmarks/h100 [--sections polar,matrices,compiled,model]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import aurora_opt
from aurora_opt.polar import POLAR_BACKENDS, make_orthogonalizer
from aurora_opt.provenance import COMMIT_ENV, provenance, write_result
from aurora_opt.train.gpt import GPT, GPTConfig

#: (label, shape) in nn.Linear layout (out, in)
MATRIX_SHAPES = [
    ("124M attn", (768, 768)),
    ("124M mlp in", (3072, 768)),
    ("124M mlp out", (768, 3072)),
    ("1B attn", (2048, 2048)),
    ("1B mlp in", (5632, 2048)),
    ("1B mlp out", (2048, 5632)),
    ("8B mlp in", (14336, 4096)),
    ("8B mlp out", (4096, 14336)),
]
COMPILED_SHAPES = ["124M mlp in", "1B mlp in", "8B mlp in"]
POLAR_SHAPES = ["124M mlp in", "1B mlp in"]
QUICK_SHAPES = [("quick tall", (48, 16)), ("quick wide", (16, 48))]
#: the optimizers of the per-matrix sections: label → (registry name, keyword arguments); Aurora also
#: with full-precision Gram steps, to measure what its default bf16 Gram products (on CUDA) save, with
#: one Gram step per optimizer step instead of CUDA's default two, and with its polar factor reduced
#: (its last Gram factorization as CholeskyQR's first pass, what its default "auto" does in fp32)
SPECTRAL: dict[str, tuple[str, dict[str, Any]]] = {
    "muon": ("muon", {}),
    "normuon": ("normuon", {}),
    "unormuon": ("unormuon", {}),
    "aurora": ("aurora", {}),
    "aurora_fp32_gram": ("aurora", {"gram_matmul_dtype": torch.float32}),
    "aurora_gram1": ("aurora", {"balance_steps": 1}),
    "aurora_qr": ("aurora", {"polar_reduction": "qr"}),
}


def reduction_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``polar_reduction`` where ``--polar-reduction`` gives one, else each optimizer's default."""
    return {} if args.polar_reduction is None else {"polar_reduction": args.polar_reduction}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: torch.device, fn) -> int | None:
    """Memory allocated during ``fn()`` beyond what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


class DriftingGradient:
    """G_t = signal + noise_t: a fixed low-rank part with row scales log-uniform over two decades
    (along the long side) plus fresh unit Gaussian noise each call, drawn from the gradient's own
    generator, so that every run, and every optimizer given a gradient of the same seed, sees the
    same sequence."""

    def __init__(self, shape: tuple[int, int], device: torch.device, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        m, n = shape
        rank = max(1, min(m, n) // 16)
        low_rank = torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) / math.sqrt(rank)
        long_side = max(m, n)
        scales = torch.logspace(-1, 1, long_side)[torch.randperm(long_side, generator=g)]
        self.signal = (2 * low_rank).to(device)
        self.scales = (scales[:, None] if m >= n else scales[None, :]).to(device)
        self.shape = shape
        self.device = device
        self.noise = torch.Generator(device=device).manual_seed(seed)

    def __call__(self) -> Tensor:
        noise = torch.randn(self.shape, device=self.device, generator=self.noise)
        return (self.signal + noise) * self.scales


def time_round_robin(
    steps: dict[str, Any], prepare: dict[str, Any], device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of each ``steps[name]()`` after ``prepare[name]()`` (untimed), names in turn."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            prepare[name]()
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "steps": len(times)}


def row_error(delta: Tensor) -> float:
    """max_i |‖U_i‖²·m/n − 1| of the update direction (oriented tall); the shape scale cancels."""
    U = delta.double()
    if U.size(0) < U.size(1):
        U = U.mT
    lev = U.square().sum(dim=1)
    return float((lev / lev.mean() - 1).abs().max())


def bench_matrices(shapes, args, device, *, compiled: bool) -> list[dict[str, Any]]:
    rows = []
    for label, shape in shapes:
        params, optimizers, gradients = {}, {}, {}
        for name, (registry_name, extra) in SPECTRAL.items():
            torch.manual_seed(0)
            p = torch.nn.Parameter(0.02 * torch.randn(shape, device=device))
            p.grad = torch.zeros_like(p)
            # lr 1, no weight decay: a step changes p by exactly s(m, n)·U
            optimizers[name] = aurora_opt.get_optimizer(registry_name)(
                [p],
                lr=torch.tensor(1.0),
                weight_decay=0.0,
                polar=args.polar,
                **{**reduction_kwargs(args), **extra},
            )
            params[name] = p
            gradients[name] = DriftingGradient(shape, device, seed=1)
        steps = {}
        compile_seconds = {}
        for name, opt in optimizers.items():
            if compiled:
                steps[name] = torch.compile(opt.step, fullgraph=True, backend=args.compile_backend)
                params[name].grad.copy_(gradients[name]())
                start = time.perf_counter()
                steps[name]()
                sync(device)
                compile_seconds[name] = time.perf_counter() - start
            else:
                steps[name] = opt.step
        prepare = {name: (lambda p=params[name], g=gradients[name]: p.grad.copy_(g())) for name in SPECTRAL}
        times = time_round_robin(steps, prepare, device, args.warmup, args.repeats)
        entry: dict[str, Any] = {"label": label, "shape": list(shape), "compiled": compiled, "optimizers": {}}
        for name in SPECTRAL:
            before = params[name].detach().clone()
            prepare[name]()
            peak = peak_bytes(device, steps[name])
            result = summary(times[name])
            result["peak_step_bytes"] = peak
            if name not in ("normuon", "unormuon"):
                result["row_error"] = row_error(params[name].detach() - before)
            if compiled:
                result["compile_seconds"] = compile_seconds[name]
            entry["optimizers"][name] = result
        muon = entry["optimizers"]["muon"]
        for result in entry["optimizers"].values():
            result["median_ratio_to_muon"] = result["median_ms"] / muon["median_ms"]
            result["min_ratio_to_muon"] = result["min_ms"] / muon["min_ms"]
        rows.append(entry)
        aurora = entry["optimizers"]["aurora"]
        print(
            f"{label} {shape} {'compiled' if compiled else 'eager'}: Muon {muon['median_ms']:.3f} ms, Aurora "
            f"{aurora['median_ratio_to_muon']:.3f}× (min {aurora['min_ratio_to_muon']:.3f}×), "
            f"row error {aurora['row_error']:.1e}; with fp32 Gram steps "
            f"{entry['optimizers']['aurora_fp32_gram']['median_ratio_to_muon']:.3f}×, with one Gram step "
            f"{entry['optimizers']['aurora_gram1']['median_ratio_to_muon']:.3f}×, reduced "
            f"{entry['optimizers']['aurora_qr']['median_ratio_to_muon']:.3f}×",
            flush=True,
        )
        del params, optimizers, steps
        torch._dynamo.reset()
    return rows


def bench_polar(shapes, args, device) -> list[dict[str, Any]]:
    rows = []
    for label, shape in shapes:
        G = DriftingGradient(shape, device, seed=2)()
        exact = aurora_opt.get_polar("svd")(G.double())
        entry: dict[str, Any] = {"label": label, "shape": list(shape), "backends": {}}
        steps, prepare = {}, {}
        for backend in ("polar_express", "simple_quintic", "newton_schulz"):
            for dtype in (torch.bfloat16, torch.float32):
                key = f"{backend}/{str(dtype).removeprefix('torch.')}"
                fn = POLAR_BACKENDS[backend]
                steps[key] = lambda fn=fn, dtype=dtype, G=G: fn(G.to(dtype))
                if backend == "polar_express":  # and from the fp32 CholeskyQR2's triangular factor
                    reduced = make_orthogonalizer(backend, steps=None, eps=1e-7, dtype=dtype, reduction="qr")
                    steps[key + "/qr"] = lambda reduced=reduced, G=G: reduced(G)
        for key, step in steps.items():
            prepare[key] = lambda: None
            U = step().double()
            entry["backends"][key] = {"relative_error": float((U - exact).norm() / exact.norm())}
        times = time_round_robin(steps, prepare, device, args.warmup, args.repeats)
        for key, t in times.items():
            entry["backends"][key].update(summary(t))
        rows.append(entry)
        print(
            f"polar {label}: "
            + ", ".join(
                f"{k} {v['median_ms']:.3f} ms err {v['relative_error']:.1e}" for k, v in entry["backends"].items()
            ),
            flush=True,
        )
    return rows


def bench_model(args, device) -> dict[str, Any]:
    """Whole training step of a SwiGLU GPT (forward + backward + optimizer) under bf16 autocast."""
    if args.quick:
        config = GPTConfig(vocab_size=256, seq_len=32, n_layer=1, n_head=2, d_model=32, mlp_expansion=4)
        batch = 2
    else:
        config = GPTConfig(vocab_size=50304, seq_len=1024, n_layer=12, n_head=12, d_model=768, mlp_expansion=4)
        batch = args.batch_size
    torch.manual_seed(0)
    model = GPT(config).to(device)
    forward = torch.compile(model, backend=args.compile_backend) if args.compile_model else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    tokens = torch.randint(0, config.vocab_size, (batch, config.seq_len + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def forward_backward() -> None:
        model.zero_grad(set_to_none=False)
        with autocast:
            loss = forward(inputs, targets)
        loss.backward()

    def make(name: str):
        if name == "adamw":
            return torch.optim.AdamW(model.parameters(), lr=torch.tensor(3e-4), fused=device.type == "cuda")
        return aurora_opt.get_optimizer(name)(
            aurora_opt.param_groups(model),
            lr=torch.tensor(0.02),
            adamw_lr=torch.tensor(3e-4),
            polar=args.polar,
            **reduction_kwargs(args),
        )

    forward_backward()  # gradients exist before any optimizer is built (and the model is compiled)
    optimizers = {name: make(name) for name in ("adamw", "muon", "aurora")}
    variants: dict[str, Any] = {}
    compile_seconds = {}
    for name, opt in optimizers.items():
        variants[f"{name} eager"] = opt.step
        if name != "adamw":  # torch's fused AdamW is already one kernel per parameter list
            compiled_step = torch.compile(opt.step, fullgraph=True, backend=args.compile_backend)
            start = time.perf_counter()
            compiled_step()
            sync(device)
            compile_seconds[name] = time.perf_counter() - start
            variants[f"{name} compiled"] = compiled_step
    steps = {key: (lambda step=step: (forward_backward(), step())) for key, step in variants.items()}
    optimizer_only = dict(variants)
    prepare = {key: (lambda: None) for key in steps}
    whole = time_round_robin(steps, prepare, device, args.warmup, args.repeats)
    forward_backward()
    alone = time_round_robin(optimizer_only, prepare, device, args.warmup, args.repeats)
    result: dict[str, Any] = {
        "config": {
            **config.__dict__,
            "batch_size": batch,
            "params": model.num_params(),
            "compiled_model": args.compile_model,
        },
        "compile_seconds": compile_seconds,
        "steps": {},
    }
    for key in steps:
        peak = peak_bytes(device, variants[key])
        result["steps"][key] = {
            "whole": summary(whole[key]),
            "optimizer": summary(alone[key]),
            "optimizer_peak_bytes": peak,
        }
    reference = result["steps"]["adamw eager"]["whole"]["median_ms"]
    for key, entry in result["steps"].items():
        entry["whole_ratio_to_adamw"] = entry["whole"]["median_ms"] / reference
        muon_key = "muon " + key.split(" ")[1] if key.startswith("aurora") else None
        if muon_key in result["steps"]:
            entry["whole_ratio_to_muon"] = entry["whole"]["median_ms"] / result["steps"][muon_key]["whole"]["median_ms"]
        print(
            f"model {key}: whole {entry['whole']['median_ms']:.1f} ms, optimizer {entry['optimizer']['median_ms']:.2f} ms",
            flush=True,
        )
    return result


def markdown(report: dict[str, Any]) -> str:
    p = report["provenance"]
    lines = [
        f"Machine: {p['device']}, {p['machine']['cpu']}, torch {p['torch']} (CUDA {p['cuda']}); aurora-opt "
        f"{p['version']}, commit {p['commit']}{' (dirty tree)' if p['dirty'] else ''}; `{p['command']}`; {p['utc']}; "
        f"polar backend `{report['polar']}` (bf16 on CUDA), polar_reduction {report.get('polar_reduction')}; {report['warmup']} warm-up rounds, {report['repeats']} timed, "
        "interleaved, a fresh gradient every step. ms = median step (fastest in brackets).",
        "",
    ]
    if report.get("polar_backends"):
        lines += ["| shape | backend/dtype | ms | relative error vs SVD |", "|---|---|---|---|"]
        for entry in report["polar_backends"]:
            for key, v in entry["backends"].items():
                lines.append(
                    f"| {entry['label']} {entry['shape'][0]}×{entry['shape'][1]} | {key} | {v['median_ms']:.3f} | {v['relative_error']:.1e} |"
                )
        lines.append("")
    for section in ("matrices", "compiled"):
        if not report.get(section):
            continue
        lines += [
            f"Per-matrix `optimizer.step()`, {'compiled (fullgraph)' if section == 'compiled' else 'eager'}:",
            "",
            "| shape | Muon ms | NorMuon × | U-NorMuon × | Aurora × | Aurora, fp32 Gram × | Aurora, 1 Gram step × "
            '| Aurora, `"qr"` × | Aurora row error | Aurora extra peak MiB |',
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in report[section]:
            o = entry["optimizers"]
            extra = (
                f"{(o['aurora']['peak_step_bytes'] - o['muon']['peak_step_bytes']) / 2**20:+.1f}"
                if o["muon"]["peak_step_bytes"] is not None
                else "–"
            )
            lines.append(
                f"| {entry['label']} {entry['shape'][0]}×{entry['shape'][1]} | {o['muon']['median_ms']:.3f} ({o['muon']['min_ms']:.3f}) "
                f"| {o['normuon']['median_ratio_to_muon']:.3f} | {o['unormuon']['median_ratio_to_muon']:.3f} "
                f"| {o['aurora']['median_ratio_to_muon']:.3f} ({o['aurora']['min_ratio_to_muon']:.3f}) "
                f"| {o['aurora_fp32_gram']['median_ratio_to_muon']:.3f} "
                f"| {o['aurora_gram1']['median_ratio_to_muon']:.3f} "
                f"| {o['aurora_qr']['median_ratio_to_muon']:.3f} "
                f"| {o['aurora']['row_error']:.1e} | {extra} |"
            )
        lines.append("")
    if report.get("model"):
        m = report["model"]
        c = m["config"]
        lines += [
            f"Whole training step, SwiGLU GPT {c['params'] / 1e6:.0f}M ({c['n_layer']} layers, d {c['d_model']}, "
            f"batch {c['batch_size']}×{c['seq_len']}), bf16 autocast, model compiled: {c['compiled_model']}:",
            "",
            "| optimizer step | whole step ms | × AdamW | × Muon (same mode) | optimizer alone ms | optimizer peak MiB |",
            "|---|---|---|---|---|---|",
        ]
        for key, e in m["steps"].items():
            peak = f"{e['optimizer_peak_bytes'] / 2**20:.0f}" if e["optimizer_peak_bytes"] is not None else "–"
            to_muon = f"{e['whole_ratio_to_muon']:.3f}" if "whole_ratio_to_muon" in e else "–"
            lines.append(
                f"| {key} | {e['whole']['median_ms']:.1f} | {e['whole_ratio_to_adamw']:.3f} | {to_muon} "
                f"| {e['optimizer']['median_ms']:.2f} | {peak} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sections", default="polar,matrices,compiled,model")
    parser.add_argument("--polar", default="polar_express")
    parser.add_argument(
        "--polar-reduction",
        default=None,
        choices=["qr"],
        help="polar_reduction of every spectral optimizer (default: each optimizer's own: none for Muon, "
        "NorMuon and U-NorMuon, 'auto' for Aurora, which computes a bf16 polar factor directly)",
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-compile-model", dest="compile_model", action="store_false")
    parser.add_argument(
        "--commit", default=None, help=f"the commit measured, where the tree has no .git (or set ${COMMIT_ENV})"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and model: a smoke test")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    sections = set(args.sections.split(","))
    if args.quick:
        args.warmup, args.repeats = 1, 2
    shapes = QUICK_SHAPES if args.quick else MATRIX_SHAPES
    by_label = dict(shapes)
    command = ["python", "benchmarks/gpu.py", *(sys.argv[1:] if argv is None else argv)]
    report: dict[str, Any] = {
        "provenance": provenance(device, command, commit=args.commit),
        "polar": args.polar,
        "polar_reduction": args.polar_reduction,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }

    def save() -> None:  # after every section, so a run stopped early keeps what it measured
        write_result(args.out, "gpu", report, markdown(report))

    if "polar" in sections:
        chosen = shapes if args.quick else [(label, by_label[label]) for label in POLAR_SHAPES]
        report["polar_backends"] = bench_polar(chosen, args, device)
        save()
    if "matrices" in sections:
        report["matrices"] = bench_matrices(shapes, args, device, compiled=False)
        save()
    if "compiled" in sections:
        chosen = shapes[:1] if args.quick else [(label, by_label[label]) for label in COMPILED_SHAPES]
        report["compiled"] = bench_matrices(chosen, args, device, compiled=True)
        save()
    if "model" in sections:
        report["model"] = bench_model(args, device)
        save()
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
