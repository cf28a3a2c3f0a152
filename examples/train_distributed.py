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
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from aurora_opt import OPTIMIZERS, get_optimizer, param_groups
from aurora_opt.distributed import distribute_model, init_distributed
from aurora_opt.train.data import stdlib_prefix


class Block(nn.Module):
    """Pre-norm causal self-attention and SwiGLU MLP (up/gate are tall: expansion·d × d)."""

    def __init__(self, d_model: int, heads: int, expansion: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, expansion * d_model, bias=False)
        self.gate = nn.Linear(d_model, expansion * d_model, bias=False)
        self.down = nn.Linear(expansion * d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1).transpose(1, 3).unbind(2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, d_model))
        h = self.mlp_norm(x)
        return x + self.down(self.up(h) * F.silu(self.gate(h)))


class ByteGPT(nn.Module):
    def __init__(self, d_model: int, layers: int, heads: int, expansion: int, context: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, d_model)
        self.position = nn.Parameter(torch.zeros(context, d_model))
        self.blocks = nn.ModuleList(Block(d_model, heads, expansion) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 256, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.size(1)]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


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
    model = ByteGPT(args.d_model, args.layers, args.heads, args.expansion, args.context).to(device)
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
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))
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
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
