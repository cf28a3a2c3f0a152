"""Data-parallel training of a small byte-level GPT with a spectral optimizer (DDP or FSDP2).

    torchrun --nproc_per_node 2 examples/train_distributed.py --mode ddp --optimizer aurora
    torchrun --nproc_per_node 2 examples/train_distributed.py --mode fsdp2 --optimizer normuon

Runs on CPU (gloo) or one GPU per rank (NCCL). The text is the Python standard library's own
source, so nothing is downloaded. Each rank trains on its own batches; the optimizer shares the
orthogonalization of the hidden matrices across the ranks. At the end rank 0 prints the loss and
each rank's median optimizer-step time, as wall-clock time and as the CPU time of the rank's process
(``time.process_time``, which waiting for a busy CPU does not inflate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

from aurora_opt import OPTIMIZERS, get_optimizer, param_groups
from aurora_opt.data_parallel import distribute_model, finish_distributed, init_distributed
from aurora_opt.train.data import stdlib_prefix
from aurora_opt.train.gpt import GPT, GPTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("ddp", "fsdp2"), default="ddp")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="aurora")
    parser.add_argument("--lr", type=float, default=None, help="spectral lr (default: the optimizer's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="sequences per rank and step")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    parser.add_argument("--no-share", action="store_true", help="ddp only: every rank computes every direction")
    args = parser.parse_args()
    if args.no_share and args.mode != "ddp":
        parser.error("--no-share needs --mode ddp (sharded parameters must be assembled to be orthogonalized)")

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if "RANK" not in os.environ:
        parser.error("launch with torchrun, e.g. torchrun --nproc_per_node 2 examples/train_distributed.py")
    device = init_distributed()
    rank, world_size = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # the same initial weights on every rank
    config = GPTConfig(
        vocab_size=256,  # bytes
        seq_len=args.context,
        n_layer=args.layers,
        n_head=args.heads,
        d_model=args.d_model,
        mlp_expansion=args.expansion,
    )
    model = GPT(config).to(device)
    model = distribute_model(model, args.mode, blocks=list(model.blocks))
    options = {"lr": args.lr} if args.lr is not None else {}
    if args.no_share:
        options["process_group"] = "local"
    optimizer = get_optimizer(args.optimizer)(param_groups(model), **options)

    text = stdlib_prefix(4_000_000).to(device)
    generator = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    step_times, cpu_times, losses = [], [], []
    for _ in range(args.steps):
        starts = torch.randint(0, len(text) - args.context - 1, (args.batch,), generator=generator).to(device)
        window = torch.stack([text[s : s + args.context + 1] for s in starts.tolist()])
        loss = model(window[:, :-1], window[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        losses.append(loss.detach())

    mean_loss = torch.stack(losses[-5:]).mean()
    dist.all_reduce(mean_loss)
    warm = slice(2, None) if len(step_times) > 4 else slice(None)
    timing = (statistics.median(step_times[warm]) * 1e3, statistics.median(cpu_times[warm]) * 1e3)
    timings = [None] * world_size
    dist.all_gather_object(timings, timing)
    if rank == 0:
        print(
            f"{args.mode} {args.optimizer} world_size={world_size} steps={args.steps}: "
            f"loss (last 5 steps, all ranks) {mean_loss.item() / world_size:.3f}, first {losses[0].item():.3f}"
        )
        print(
            "median optimizer step per rank, wall / process CPU (ms): "
            + ", ".join(f"rank {r}: {wall:.1f} / {cpu:.1f}" for r, (wall, cpu) in enumerate(timings))
        )
    finish_distributed()


if __name__ == "__main__":
    main()
    # Exit without interpreter finalization: the process group is destroyed and the output written,
    # but torch's C++ threads (gloo's and the autograd engine's, which DDP and FSDP2 hooks run on)
    # can still drop references to Python objects while the interpreter shuts down, which now and
    # then aborts a rank with "terminate called without an active exception" (SIGABRT) and makes
    # torchrun exit 1 after a successful run (the torch teardown race of pytorch/pytorch#190489).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
