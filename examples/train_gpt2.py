"""GPT-2 124M with a spectral optimizer, in the spirit of modded-nanoGPT's optimizer track.

    # one GPU, modded-nanoGPT FineWeb shards (fineweb_train_*.bin, fineweb_val_*.bin)
    python examples/train_gpt2.py --config gpt2-124m --data data/fineweb10B --optimizer aurora --lr 0.02 \\
        --compile --max-minutes 30 --out runs/aurora
    # 8 GPUs (DDP; every rank reads its own slice of each batch)
    torchrun --nproc_per_node 8 examples/train_gpt2.py --config gpt2-124m-swiglu --data data/fineweb10B ...
    # CPU smoke test: the tiny config on the Python standard library's source (no --data)
    python examples/train_gpt2.py --config tiny --steps 5 --out /tmp/gpt2-smoke

Configs: ``gpt2-124m`` (12 layers, d 768, 12 heads, GELU MLP ×4, context 1024, vocab 50304),
``gpt2-124m-swiglu`` (the same with a SwiGLU MLP ×4) and ``tiny`` (byte-level, for tests). With
``--data`` the tokens are uint16 modded-nanoGPT ``.bin`` shards (header of 256 int32: magic
20240520, version 1, token count); shards whose name contains ``val`` are the validation set.
Without ``--data`` the text is the byte corpus of :mod:`aurora_opt.train.data`.

On CUDA the forward pass runs under bf16 autocast (fp32 on CPU). The learning rate is constant,
then falls linearly to 0 over the last ``--cooldown`` fraction of ``--steps``; ``--max-minutes``
stops early (after a last evaluation) when the wall-clock budget is spent. ``--out DIR`` receives
``log.jsonl`` (one line per log point: step, train and validation loss, starved fraction of the MLP
input rows from :class:`aurora_opt.diagnostics.NeuronHealth`, tokens/s) and ``result.json``
(configuration, final numbers and provenance). A run whose loss or gradients become non-finite
stops, records where in result.json (``final.diverged``) and exits with status 1. Each rank runs
the whole optimizer step on the all-reduced gradients; ``aurora_opt.distributed`` shares that work
across ranks instead (examples/train_distributed.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from aurora_opt import OPTIMIZERS, NonFiniteGradError, param_groups
from aurora_opt.diagnostics import NeuronHealth
from aurora_opt.provenance import provenance
from aurora_opt.train.data import DataError, load_corpus, open_shard
from aurora_opt.train.gpt import GPT, GPTConfig
from aurora_opt.train.trainer import autocast_for

#: model shapes; the GPT-2 vocabulary (50257) is padded to a multiple of 128 as in modded-nanoGPT
CONFIGS = {
    "gpt2-124m": GPTConfig(
        vocab_size=50304, seq_len=1024, n_layer=12, n_head=12, d_model=768, mlp_expansion=4, mlp="gelu"
    ),
    "gpt2-124m-swiglu": GPTConfig(
        vocab_size=50304, seq_len=1024, n_layer=12, n_head=12, d_model=768, mlp_expansion=4, mlp="swiglu"
    ),
    "tiny": GPTConfig(vocab_size=256, seq_len=32, n_layer=2, n_head=2, d_model=32, mlp_expansion=4, mlp="swiglu"),
}
OPTIMIZER_CHOICES = ("muon", "normuon", "unormuon", "aurora", "riemannian_aurora", "adamw")
#: lr of each optimizer unless --lr is given: the library defaults (AdamW: GPT-2 small's usual 6e-4)
DEFAULT_LRS = {
    "muon": 0.02,
    "normuon": 0.02,
    "unormuon": 0.02,
    "aurora": 0.02,
    "riemannian_aurora": 0.02,
    "adamw": 6e-4,
}


class TokenStream:
    """Consecutive windows of B·T + 1 tokens from a list of token arrays, rank ``rank`` of ``world``
    taking every ``world``-th window, so the ranks together read the data once, in order."""

    def __init__(self, arrays: list[np.ndarray], batch: int, seq_len: int, rank: int, world: int) -> None:
        self.arrays, self.batch, self.seq_len, self.rank, self.world = arrays, batch, seq_len, rank, world
        self.span = batch * seq_len
        if all(a.size < self.span * world + 1 for a in arrays):
            raise DataError(f"no token array holds one batch of {batch}×{seq_len} tokens for {world} rank(s)")
        self.array, self.position = 0, rank * self.span

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        while self.position + self.span + 1 > self.arrays[self.array].size:  # next array, wrapping around
            self.array, self.position = (self.array + 1) % len(self.arrays), self.rank * self.span
        tokens = self.arrays[self.array][self.position : self.position + self.span + 1]
        window = torch.from_numpy(tokens.astype(np.int64))
        self.position += self.world * self.span
        return window[:-1].view(self.batch, self.seq_len), window[1:].view(self.batch, self.seq_len)


def load_tokens(data: Path | None) -> tuple[list[np.ndarray], list[np.ndarray], str, int | None]:
    """(train arrays, validation arrays, data name, vocabulary size: ``None`` for GPT-2 token shards,
    which take the config's padded vocabulary, 256 for bytes)."""
    if data is not None and (data.suffix == ".bin" or (data.is_dir() and any(data.glob("*.bin")))):
        paths = sorted(data.glob("*.bin")) if data.is_dir() else [data]
        val_paths = [p for p in paths if "val" in p.name]
        train_paths = [p for p in paths if p not in val_paths]
        if not train_paths or not val_paths:
            raise DataError(f"{data}: need training shards and validation shards (a name containing 'val')")
        train, val = [open_shard(p) for p in train_paths], [open_shard(p) for p in val_paths]
        return train, val, ",".join(p.name for p in paths), None
    corpus = load_corpus(data)
    return [corpus.train.numpy()], [corpus.val.numpy()], corpus.source, corpus.vocab_size


def build_optimizer(
    name: str, model: GPT, lr: float, weight_decay: float | None, adamw_lr: float, fused: bool
) -> torch.optim.Optimizer:
    """AdamW for everything, or the spectral rule for hidden matrices and AdamW for the rest."""
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay or 0.0, fused=fused
        )
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    return OPTIMIZERS[name](param_groups(model), lr=lr, adamw_lr=adamw_lr, **extra)


def lr_factor(step: int, steps: int, cooldown: float) -> float:
    """1 until the last ``cooldown`` fraction of the run, then linearly down to 0 at ``steps``."""
    start = steps * (1 - cooldown)
    return 1.0 if step < start else max(0.0, (steps - step) / max(steps - start, 1e-9))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    val: list[np.ndarray],
    args: argparse.Namespace,
    batch: int,
    seq_len: int,
    device: torch.device,
    rank: int,
    world: int,
) -> float:
    """Mean loss (nats/token) over the first ``--val-tokens`` validation tokens, averaged over ranks."""
    model.eval()
    stream = TokenStream(val, batch, seq_len, rank, world)
    held = sum(a.size for a in val) // (batch * seq_len * world)  # no window read twice
    batches = max(1, min(held, args.val_tokens // (batch * seq_len * world)))
    total = torch.zeros((), device=device)
    autocast = autocast_for(device)
    for _ in range(batches):
        x, y = stream.next()
        with autocast():
            total += model(x.to(device), y.to(device)).float()
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total) / (batches * world)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="gpt2-124m")
    parser.add_argument("--data", type=Path, default=None, help=".bin shard directory or file; default: stdlib bytes")
    parser.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="aurora")
    parser.add_argument("--lr", type=float, default=None, help="default: the optimizer's default")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: the optimizer's default")
    parser.add_argument("--adamw-lr", type=float, default=6e-4, help="embeddings, head and norms (spectral runs)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per rank per step")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the config's context")
    parser.add_argument("--cooldown", type=float, default=0.4, help="fraction of steps with a linear lr decay")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget for training")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-tokens", type=int, default=1 << 20)
    parser.add_argument("--diag-every", type=int, default=10, help="measure update shares every N steps")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for log.jsonl and result.json")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "log_every", "val_every", "val_tokens", "diag_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.cooldown <= 1.0:
        parser.error("--cooldown must be in [0, 1]")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a directory")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_flush_denormal(True)

    train_arrays, val_arrays, data_name, vocab_size = load_tokens(args.data)
    shape = CONFIGS[args.config]
    seq_len = args.seq_len or shape.seq_len
    config = GPTConfig(**{**asdict(shape), "seq_len": seq_len, "vocab_size": vocab_size or shape.vocab_size})
    torch.manual_seed(args.seed)
    model = GPT(config).to(device)
    lr = DEFAULT_LRS[args.optimizer] if args.lr is None else args.lr
    optimizer = build_optimizer(args.optimizer, model, lr, args.weight_decay, args.adamw_lr, device.type == "cuda")
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    health = NeuronHealth(model, every=args.diag_every).attach(optimizer)
    forward: torch.nn.Module = model
    if args.compile:
        forward = torch.compile(forward)
    if world > 1:
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    stream = TokenStream(train_arrays, args.batch_size, seq_len, rank, world)
    autocast = autocast_for(device)
    tokens_per_step = args.batch_size * seq_len * world

    log = None
    if main_rank and args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        log = (args.out / "log.jsonl").open("w")
    history: list[dict[str, Any]] = []

    def write(entry: dict[str, Any]) -> None:
        history.append(entry)
        if main_rank:
            shown = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items())
            print(" ".join(shown), flush=True)
            if log is not None:
                log.write(json.dumps(entry) + "\n")
                log.flush()

    start = time.perf_counter()
    interval_start, interval_loss, interval_steps = start, torch.zeros((), device=device), 0
    step, stopped_early = 0, False
    forward.train()
    diverged = None
    try:
        while step < args.steps:
            out_of_time = args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes
            if world > 1 and args.max_minutes is not None:  # every rank stops at the same step
                flag = torch.tensor(float(out_of_time), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag)
            if out_of_time:
                stopped_early = True
                break
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(step, args.steps, args.cooldown)
            x, y = stream.next()
            with autocast():
                loss = forward(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_loss += loss.detach().float()
            interval_steps += 1
            last = step == args.steps
            if step % args.log_every == 0 or step % args.val_every == 0 or last:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                now = time.perf_counter()
                if world > 1:  # the mean over every rank's batches
                    dist.all_reduce(interval_loss)
                    interval_loss /= world
                train_loss = float(interval_loss) / interval_steps
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"{args.optimizer}: training loss became {train_loss} by step {step}")
                health_now = health.measure()
                entry = {
                    "step": step,
                    "train_loss": train_loss,
                    "val_loss": (
                        evaluate(forward, val_arrays, args, args.batch_size, seq_len, device, rank, world)
                        if step % args.val_every == 0 or last
                        else None
                    ),
                    "starved_fraction": health_now.starved_fraction,
                    "inactive_fraction": health_now.act_dead_fraction,
                    "tokens_per_s": interval_steps * tokens_per_step / (now - interval_start),
                    "lr": optimizer.param_groups[0]["lr"],
                    "elapsed_s": now - start,
                }
                write(entry)
                interval_start, interval_loss, interval_steps = time.perf_counter(), torch.zeros((), device=device), 0
    except (NonFiniteGradError, FloatingPointError) as err:  # report the divergence, keep the log
        diverged = f"step {step + 1}: {err}"
        print(f"train_gpt2: diverged at {diverged}", file=sys.stderr)
    if diverged is None and (stopped_early or not history or history[-1]["val_loss"] is None):
        write(
            {
                "step": step,
                "train_loss": None,
                "val_loss": evaluate(forward, val_arrays, args, args.batch_size, seq_len, device, rank, world),
                "starved_fraction": health.starved_fraction(),
                "inactive_fraction": None,
                "tokens_per_s": None,
                "lr": optimizer.param_groups[0]["lr"],
                "elapsed_s": time.perf_counter() - start,
            }
        )
    wall = time.perf_counter() - start
    if main_rank and args.out is not None:
        final = history[-1] if history else {"val_loss": None, "starved_fraction": None}
        measured = [h["tokens_per_s"] for h in history[1:] if h["tokens_per_s"] is not None]  # first: compile
        result = {
            "provenance": provenance(device, ["python", "examples/train_gpt2.py", *argv]),
            "config": {
                "model": args.config,
                **asdict(config),
                "num_params": model.num_params(),
                "optimizer": args.optimizer,
                "lr": lr,
                "weight_decay": args.weight_decay,
                "adamw_lr": args.adamw_lr,
                "steps": args.steps,
                "batch_size_per_rank": args.batch_size,
                "world_size": world,
                "tokens_per_step": tokens_per_step,
                "cooldown": args.cooldown,
                "compile": args.compile,
                "autocast": "bf16" if device.type != "cpu" else "fp32",
                "data": data_name,
                "seed": args.seed,
                "max_minutes": args.max_minutes,
            },
            "final": {
                "step": step,
                "val_loss": final["val_loss"],
                "starved_fraction": final["starved_fraction"],
                "tokens_per_s": sum(measured) / len(measured) if measured else None,
                "wall_seconds": wall,
                "stopped_by_time_budget": stopped_early,
                "diverged": diverged,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            },
        }
        (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    if log is not None:
        log.close()
    health.detach()
    if world > 1:
        dist.destroy_process_group()
    return 0 if diverged is None else 1


if __name__ == "__main__":
    sys.exit(main())
