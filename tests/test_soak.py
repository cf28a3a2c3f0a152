"""Soak run: thousands of CPU steps of the small GPT of `aurora-opt compare` per optimizer, no NaN, memory flat.

The slow test (``pytest -m slow tests/test_soak.py``) runs ``AURORA_SOAK_STEPS`` steps (default
2000) per optimizer; the default suite runs a short version of the same harness. Run this file as a
script to print the measurements as a table::

    PYTHONPATH=src python tests/test_soak.py --steps 2000 [--out soak.json]

(``--out`` writes the measurements with their provenance as JSON.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import aurora_opt
from aurora_opt.provenance import provenance
from aurora_opt.train.data import stdlib_name, stdlib_prefix
from aurora_opt.train.gpt import GPT, GPTConfig

SOAK_STEPS = int(os.environ.get("AURORA_SOAK_STEPS", "2000"))
SMOKE_STEPS = 10
#: RSS may grow this much between the end of warm-up and the last step. The allocator keeps freed
#: blocks and glibc arenas settle over the first steps (a few MiB); a leak of even one 256×64 fp32
#: matrix (64 KiB, a gate/up weight of the soak model) per step would add 125 MiB over 2000 steps.
RSS_GROWTH_TOLERANCE_BYTES = 32 * 2**20
#: steps before the RSS baseline is taken (allocator and autograd buffers reach their steady size);
#: short runs take it halfway, so that growth over the second half is still measured
WARMUP_STEPS = 20
#: optimizer state is allocated once per parameter on the first step: its bytes must not change at all
STATE_GROWTH_TOLERANCE_BYTES = 0


def baseline_step(steps: int) -> int:
    """The (0-based) step after which the RSS baseline is read: early, at most halfway."""
    if steps < 2:
        raise ValueError(f"a soak run needs at least 2 steps to measure memory growth, got {steps}")
    return min(WARMUP_STEPS, steps // 2 - 1)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; ru_maxrss, the peak, elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


@dataclass
class SoakResult:
    optimizer: str
    steps: int
    baseline_step: int
    first_loss: float
    final_loss: float
    all_finite: bool
    rss_after_warmup: int
    rss_end: int
    state_bytes_first: int
    state_bytes_end: int
    seconds: float


#: the model of ``aurora-opt compare`` at its defaults (SwiGLU, expansion 4: gate/up are 256×64)
SOAK_MODEL = GPTConfig(seq_len=64, n_layer=2, n_head=4, d_model=64, mlp_expansion=4)


def soak(name: str, steps: int, *, batch: int = 16, seed: int = 0) -> SoakResult:
    """Train the project's small GPT for ``steps`` steps with optimizer ``name``; measure losses and memory."""
    torch.manual_seed(seed)
    data = stdlib_prefix(2 * 2**20)
    model = GPT(SOAK_MODEL)
    optimizer = aurora_opt.OPTIMIZERS[name](aurora_opt.param_groups(model), adamw_lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(SOAK_MODEL.seq_len + 1)

    losses: list[float] = []
    all_finite = True
    rss_step = baseline_step(steps)
    rss_after_warmup = state_bytes_first = 0
    start = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, data.numel() - SOAK_MODEL.seq_len - 1, (batch, 1), generator=generator)
        window = data[starts + offsets]
        loss = model(window[:, :-1], window[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        all_finite &= math.isfinite(losses[-1])
        if step == 0:
            state_bytes_first = state_bytes(optimizer)
        if step == rss_step:
            rss_after_warmup = rss_bytes()
    seconds = time.perf_counter() - start
    all_finite &= all(bool(torch.isfinite(p).all()) for p in model.parameters())
    all_finite &= all(
        bool(torch.isfinite(v).all()) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    window_size = max(1, min(50, steps // 10))
    return SoakResult(
        optimizer=name,
        steps=steps,
        baseline_step=rss_step,
        first_loss=sum(losses[:window_size]) / window_size,
        final_loss=sum(losses[-window_size:]) / window_size,
        all_finite=all_finite,
        rss_after_warmup=rss_after_warmup,
        rss_end=rss_bytes(),
        state_bytes_first=state_bytes_first,
        state_bytes_end=state_bytes(optimizer),
        seconds=seconds,
    )


def check(result: SoakResult) -> None:
    assert result.all_finite, "a loss, parameter or state tensor became non-finite"
    assert result.baseline_step <= result.steps // 2, "the RSS baseline must leave steps after it to measure growth"
    assert result.state_bytes_end - result.state_bytes_first <= STATE_GROWTH_TOLERANCE_BYTES
    assert result.rss_end - result.rss_after_warmup <= RSS_GROWTH_TOLERANCE_BYTES, result


@pytest.mark.parametrize("name", sorted(aurora_opt.OPTIMIZERS))
def test_soak_harness_short(name: str) -> None:
    check(soak(name, SMOKE_STEPS))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(aurora_opt.OPTIMIZERS))
def test_soak(name: str) -> None:
    result = soak(name, SOAK_STEPS)
    check(result)
    assert result.final_loss < result.first_loss, "training made no progress"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=SOAK_STEPS)
    parser.add_argument("--optimizers", nargs="*", default=sorted(aurora_opt.OPTIMIZERS))
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the measurements and their provenance")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.out is not None and args.out.is_dir():
        parser.error(f"--out {args.out}: is a directory (expected a file name)")
    record = {
        "provenance": provenance("cpu", ["python", "tests/test_soak.py", *argv]),
        "data": f"{stdlib_name()}, first 2 MiB of the top-level modules",
        "model": dataclasses.asdict(SOAK_MODEL),
        "results": [],
    }
    p = record["provenance"]
    dirty = " (dirty tree)" if p["dirty"] else ""
    print(
        f"aurora-opt {p['version']}, commit {p['commit']}{dirty}, torch {p['torch']}, "
        f"{p['threads']} threads, {p['machine']['cpu']}, {args.steps} steps"
    )
    print(
        "| optimizer | steps | mean loss, first → last 50 steps | finite | RSS after warm-up → end (MiB) "
        "| state bytes first → end | s/step |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.optimizers:
        r = soak(name, args.steps)
        record["results"].append(dataclasses.asdict(r))
        if args.out is not None:  # after every optimizer, so a stopped run keeps what it measured
            args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(
            f"| {r.optimizer} | {r.steps} | {r.first_loss:.3f} → {r.final_loss:.3f} | {r.all_finite} | "
            f"{r.rss_after_warmup / 2**20:.1f} → {r.rss_end / 2**20:.1f} | "
            f"{r.state_bytes_first} → {r.state_bytes_end} | "
            f"{r.seconds / r.steps:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
