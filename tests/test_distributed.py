"""The distributed spectral step (replicated/DDP and FSDP2-sharded) against the single-process optimizer.

Each world size is spawned once per module (CPU gloo, ``torch.multiprocessing`` spawn); its
workers run every scenario and report per scenario, so each test below reads one report. The
NCCL/GPU variant runs the same scenarios and is skipped without two CUDA devices.

The reference in every scenario is the same optimizer class with ``process_group="local"`` fed the
same whole gradients, computed in the worker itself.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from aurora_opt import Aurora, Muon, NorMuon, RiemannianAurora, UNorMuon, param_groups
from aurora_opt.data_parallel import finish_distributed
from aurora_opt.distributed import (
    assign_owners,
    check_same_device,
    matrix_cost,
    resolve_process_group,
    shard_rows,
)

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

STEPS = 3
# The distributed step feeds the direction functions the very same fp32 matrices as the
# single-process step, so results agree to the last bit unless a direction function batches
# matrices differently for a subset (then matmul rounding differs, ~1e-7 relative per product,
# amplified a little by the polar iteration). After STEPS steps at lr ≤ 0.05 the parameters then
# differ by ~1e-7; 1e-6 leaves room for that and still catches any wrong row, shard or owner
# (those move entries by ~lr = 1e-2). Measured with the per-matrix direction functions on every
# shape here, at world sizes 2 and 3: the difference is exactly 0. bf16 parameters are compared
# with the same tolerance: both sides round the same fp32 direction to bf16 the same way.
EQUIVALENCE_TOL = 1e-6
# Training through DDP/fully_shard also averages gradients across ranks (all_reduce /
# reduce_scatter) and splits the batch, which rounds differently from one process's backward
# (~1e-7 relative on the gradients); after STEPS steps that moves parameters by ~1e-6.
TRAINING_TOL = 1e-5

SHAPES = [(48, 16), (16, 40), (24, 24), (3, 12, 8), (8, 3, 3, 3)]
# dim 0 of 5, 2 and 7 rows over 3 ranks: torch.chunk blocks (2, 2, 1), (1, 1, 0) and (3, 3, 1)
UNEVEN_SHAPES = [(5, 7), (2, 9), (7, 3)]
# fewer matrices than ranks: some ranks own no matrix at all
FEW_SHAPES = [(2, 9)]

OPTIMIZERS: dict[str, tuple[type, dict]] = {
    "muon": (Muon, {}),
    "normuon": (NorMuon, {}),
    "unormuon": (UNorMuon, {}),
    "aurora": (Aurora, {}),
    "aurora_qr": (Aurora, {"polar_reduction": "qr"}),  # 48×16, 16×40 and the 8×27 conv reduced
    "riemannian_aurora": (RiemannianAurora, {"ascent_steps": 1, "balance_steps": 4, "cg_steps": 5}),
}


# ---------------------------------------------------------------------------------------------- helpers
def _gather_equal(t: torch.Tensor) -> bool:
    """Whether ``t`` holds the same bits on every rank."""
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _whole(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def _step_both(cls: type, kwargs: dict, shapes, device: torch.device, shard: Callable | None, dtype=torch.float32):
    """Run STEPS steps of a distributed and a local optimizer on the same matrices and gradients.

    ``shard`` maps a whole tensor to its DTensor (FSDP2 layout) or is None (replicated).
    Returns (distributed params, local params, distributed optimizer, local optimizer).
    """
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes] + [torch.randn(16, generator=gen).to(dtype)]
    wrap = shard or (lambda t: t)
    dist_params = [nn.Parameter(wrap(w.clone().to(device))) for w in weights]
    local_params = [nn.Parameter(w.clone().to(device)) for w in weights]
    groups = lambda ps: [{"params": ps[:-1]}, {"params": ps[-1:], "algorithm": "adamw"}]  # noqa: E731
    dist_opt = cls(groups(dist_params), **kwargs)
    local_opt = cls(groups(local_params), process_group="local", **kwargs)
    for _ in range(STEPS):
        grads = [torch.randn(w.shape, generator=gen).to(device, dtype) for w in weights]
        for p, q, g in zip(dist_params, local_params, grads):
            p.grad = wrap(g.clone())
            q.grad = g.clone()
        dist_opt.step()
        local_opt.step()
    return dist_params, local_params, dist_opt, local_opt


class _Checks:
    """Collects failed comparisons so that every rank runs every collective before anything raises
    (a rank that stopped at its first failure would leave the others waiting in a collective)."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def close(self, actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
        try:
            torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)
        except AssertionError as error:
            self.failures.append(f"{what}: {error}")

    def same_on_all_ranks(self, t: torch.Tensor, what: str) -> None:
        if not _gather_equal(t):
            self.failures.append(f"{what} differs across ranks")

    def raise_if_failed(self) -> None:
        assert not self.failures, "\n".join(self.failures)


def _check_equivalent(dist_params, local_params, dist_opt, local_opt, name: str) -> None:
    checks = _Checks()
    for index, (p, q) in enumerate(zip(dist_params, local_params)):
        whole = _whole(p.detach())
        checks.close(whole, q.detach(), EQUIVALENCE_TOL, f"{name} param {index}")
        checks.same_on_all_ranks(whole, f"{name} param {index}")
        for key, value in local_opt.state[q].items():
            mine = _whole(dist_opt.state[p][key])
            checks.close(mine, value, EQUIVALENCE_TOL, f"{name} state {key!r} of param {index}")
            checks.same_on_all_ranks(mine, f"{name} state {key!r} of param {index}")
    checks.raise_if_failed()


# ---------------------------------------------------------------------------------------------- scenarios
def scenario_replicated(device: torch.device, shapes=SHAPES) -> None:
    for name, (cls, kwargs) in OPTIMIZERS.items():
        _check_equivalent(*_step_both(cls, kwargs, shapes, device, None), name)
    # bf16 parameters (and NorMuon's bf16 neuron_variance) travel in bf16
    _check_equivalent(*_step_both(NorMuon, {}, shapes, device, None, torch.bfloat16), "normuon bf16")


def scenario_sharded(device: torch.device, shapes=SHAPES) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = _mesh(device)
    for name, (cls, kwargs) in OPTIMIZERS.items():
        results = _step_both(cls, kwargs, shapes, device, lambda t: distribute_tensor(t, mesh, [Shard(0)]))
        _check_equivalent(*results, name)
    results = _step_both(NorMuon, {}, shapes, device, lambda t: distribute_tensor(t, mesh, [Shard(0)]), torch.bfloat16)
    _check_equivalent(*results, "normuon bf16")


def scenario_replicated_uneven(device: torch.device) -> None:
    scenario_replicated(device, UNEVEN_SHAPES)
    scenario_replicated(device, FEW_SHAPES)


def scenario_sharded_uneven(device: torch.device) -> None:
    scenario_sharded(device, UNEVEN_SHAPES)
    scenario_sharded(device, FEW_SHAPES)


class _MLP(nn.Module):
    """A small SwiGLU-style block: tall up/gate, wide down, square mix, plus an embedding and a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.up = nn.Linear(16, 48, bias=False)
        self.gate = nn.Linear(16, 48, bias=False)
        self.down = nn.Linear(48, 16, bias=False)
        self.mix = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 32, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.down(self.up(x) * torch.nn.functional.silu(self.gate(x)))
        return self.head(self.norm(self.mix(x)))


def _model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return _MLP().to(device)


def _batch(step: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 32, (4, 9), generator=torch.Generator().manual_seed(100 + step)).to(device)


def _loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, 32), tokens[:, 1:].reshape(-1))


def _train(model: nn.Module, optimizer, steps: range, device: torch.device, rank_slice: slice = slice(None)) -> None:
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        _loss(model, _batch(step, device)[rank_slice]).backward()
        optimizer.step()


def _reference_model(steps: int, device: torch.device) -> tuple[nn.Module, NorMuon]:
    model = _model(device)
    optimizer = NorMuon(param_groups(model), process_group="local")
    _train(model, optimizer, range(steps), device)
    return model, optimizer


def _check_training(model: nn.Module, optimizer, device: torch.device) -> None:
    reference, reference_optimizer = _reference_model(STEPS, device)
    checks = _Checks()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        whole = _whole(p.detach())
        checks.close(whole, q.detach(), TRAINING_TOL, name)
        checks.same_on_all_ranks(whole, name)
        if "neuron_variance" in reference_optimizer.state[q]:
            variance = optimizer.state[p]["neuron_variance"]
            checks.close(
                variance, reference_optimizer.state[q]["neuron_variance"], TRAINING_TOL, f"neuron_variance of {name}"
            )
            checks.same_on_all_ranks(variance, f"neuron_variance of {name}")
    checks.raise_if_failed()


def scenario_fully_shard_training(device: torch.device) -> None:
    from torch.distributed.fsdp import fully_shard

    model = _model(device)
    fully_shard(model)
    optimizer = NorMuon(param_groups(model))
    _train(model, optimizer, range(STEPS), device)
    _check_training(model, optimizer, device)


def scenario_ddp_training(device: torch.device) -> None:
    from torch.nn.parallel import DistributedDataParallel

    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(_model(device), device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = NorMuon(param_groups(model.module))
    per_rank = 4 // world
    _train(model, optimizer, range(STEPS), device, slice(rank * per_rank, (rank + 1) * per_rank))
    _check_training(model.module, optimizer, device)


def _checkpoint_roundtrip(device: torch.device, shard: bool, checkpoint_dir: str) -> None:
    """Train 2 steps, save with DCP, train 2 more; a fresh run loaded from the save must match bit for bit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    def build():
        model = _model(device)
        if shard:
            fully_shard(model)
        return model, NorMuon(param_groups(model), lr=0.02)

    model, optimizer = build()
    _train(model, optimizer, range(2), device)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint_dir)
    _train(model, optimizer, range(2, 4), device)

    resumed, resumed_optimizer = build()
    model_state, optim_state = get_state_dict(resumed, resumed_optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=checkpoint_dir)
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _train(resumed, resumed_optimizer, range(2, 4), device)

    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(_whole(p.detach()), _whole(q.detach())), f"{name} differs after resuming"
        for key, value in optimizer.state[p].items():
            assert torch.equal(_whole(value), _whole(resumed_optimizer.state[q][key])), (
                f"{name} {key} differs after resuming"
            )


def scenario_checkpoint_sharded(device: torch.device, checkpoint_dir: str) -> None:
    _checkpoint_roundtrip(device, True, os.path.join(checkpoint_dir, "fsdp"))


def scenario_checkpoint_replicated(device: torch.device, checkpoint_dir: str) -> None:
    _checkpoint_roundtrip(device, False, os.path.join(checkpoint_dir, "ddp"))


def scenario_errors(device: torch.device) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor

    rank = dist.get_rank()
    mesh = _mesh(device)
    sharded = nn.Parameter(distribute_tensor(torch.randn(6, 4, device=device), mesh, [Shard(0)]))
    plain = nn.Parameter(torch.randn(6, 4, device=device))
    sharded.grad = distribute_tensor(torch.ones(6, 4, device=device), mesh, [Shard(0)])
    plain.grad = torch.ones(6, 4, device=device)
    before = [sharded.full_tensor(), plain.detach().clone()]

    with pytest.raises(ValueError, match="mixes DTensor"):
        Muon([sharded, plain]).step()
    with pytest.raises(ValueError, match="process_group='local'"):
        Muon([sharded], process_group="local").step()

    # ranks that step different matrices: every rank raises, none hangs
    other = nn.Parameter(torch.randn(6, 4 + rank, device=device))
    other.grad = torch.ones_like(other)
    with pytest.raises(RuntimeError, match="process group mismatch"):
        Muon([other]).step()

    # a process group that is not the DTensors' mesh
    solo = dist.new_group([0])
    if rank == 0:
        with pytest.raises(ValueError, match="process group mismatch"):
            Muon([sharded], process_group=solo).step()
    else:
        with pytest.raises(ValueError, match="not a member"):
            Muon([plain], process_group=solo)
    assert torch.equal(sharded.full_tensor(), before[0]) and torch.equal(plain.detach(), before[1]), (
        "a failed step changed a parameter"
    )

    # a NaN in one rank's shard only (the last row lives on the last rank): every rank skips
    nan_grad = torch.ones(6, 4, device=device)
    nan_grad[-1, 0] = float("nan")
    sharded.grad = distribute_tensor(nan_grad, mesh, [Shard(0)])
    optimizer = Muon([sharded], on_nonfinite_grad="skip")
    optimizer.step()
    assert optimizer.skipped_steps == 1, "a rank whose shard is finite did not skip the step"
    assert torch.equal(sharded.full_tensor(), before[0])


WORLD_SCENARIOS: dict[int, list[str]] = {
    2: [
        "replicated",
        "sharded",
        "fully_shard_training",
        "ddp_training",
        "checkpoint_sharded",
        "checkpoint_replicated",
        "errors",
    ],
    3: ["replicated_uneven", "sharded_uneven"],
}


# ---------------------------------------------------------------------------------------------- runner
def _worker(rank: int, world_size: int, backend: str, port: int, names: list[str], out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # generous: a loaded 2-core machine can stall one rank for many seconds at a collective
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=300))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    results = {}
    for name in names:
        scenario = globals()[f"scenario_{name}"]
        try:
            if "checkpoint_dir" in scenario.__code__.co_varnames:
                scenario(device, checkpoint_dir=out_dir)
            else:
                scenario(device)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
        dist.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finish_distributed()
    # Exit without interpreter finalization. With the process groups destroyed and the results
    # file closed there is nothing left to clean up, but torch's C++ threads (gloo's and the
    # autograd engine's, which DDP and FSDP2 hooks run on) can still drop references to Python
    # objects while the interpreter shuts down; now and then that aborts the worker with
    # "terminate called without an active exception" (SIGABRT) after it wrote its results, and the
    # test errors although every scenario passed (the torch teardown race of pytorch/pytorch#190489).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_world(world_size: int, backend: str) -> dict[str, list[str]]:
    """Spawn the world and return, per scenario, the report of each rank ("ok" or a traceback)."""
    with tempfile.TemporaryDirectory() as out_dir:
        names = WORLD_SCENARIOS[world_size]
        mp.spawn(_worker, args=(world_size, backend, _free_port(), names, out_dir), nprocs=world_size, join=True)
        reports = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world_size)]
    return {name: [report[name] for report in reports] for name in names}


@pytest.fixture(scope="module")
def world2() -> dict[str, list[str]]:
    return _run_world(2, "gloo")


@pytest.fixture(scope="module")
def world3() -> dict[str, list[str]]:
    return _run_world(3, "gloo")


def _assert_ok(reports: list[str]) -> None:
    failures = [f"rank {r}:\n{text}" for r, text in enumerate(reports) if text != "ok"]
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------- tests
def test_replicated_matches_single_process(world2):
    _assert_ok(world2["replicated"])


def test_sharded_matches_single_process(world2):
    _assert_ok(world2["sharded"])


def test_fully_shard_training_matches_single_process(world2):
    _assert_ok(world2["fully_shard_training"])


def test_ddp_training_matches_single_process(world2):
    _assert_ok(world2["ddp_training"])


def test_checkpoint_resume_sharded(world2):
    _assert_ok(world2["checkpoint_sharded"])


def test_checkpoint_resume_replicated(world2):
    _assert_ok(world2["checkpoint_replicated"])


def test_bad_setups_raise_on_every_rank(world2):
    _assert_ok(world2["errors"])


def test_replicated_uneven_and_more_ranks_than_matrices(world3):
    _assert_ok(world3["replicated_uneven"])


def test_sharded_uneven_empty_shards_and_more_ranks_than_matrices(world3):
    _assert_ok(world3["sharded_uneven"])


@pytest.fixture(scope="module")
def world2_nccl() -> dict[str, list[str]]:
    return _run_world(2, "nccl")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
@pytest.mark.parametrize("name", WORLD_SCENARIOS[2])
def test_nccl(world2_nccl, name):
    _assert_ok(world2_nccl[name])


# ---------------------------------------------------------------------------------------------- in-process
def test_owners_balance_cost_and_agree():
    costs = [matrix_cost(s) for s in [(4096, 1024), (1024, 4096), (1024, 1024), (1024, 1024), (512, 512), (3, 64, 64)]]
    owners = assign_owners(costs, 2)
    assert owners == assign_owners(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(2)]
    # the two 4096×1024 matrices cost 4 each (in 1024³ units), the 1024² ones 1: one big one per rank
    assert owners[0] != owners[1]
    assert max(loads) <= 4 / 3 * sum(costs) / 2


def test_more_ranks_than_matrices_leaves_ranks_idle():
    owners = assign_owners([matrix_cost((8, 4)), matrix_cost((8, 8))], 5)
    assert sorted(owners) == [0, 1]


def test_shard_rows_follow_torch_chunk():
    for rows in range(0, 12):
        for world in (1, 2, 3, 5):
            chunks = torch.arange(rows).chunk(world) if rows else ()
            expected = [len(c) for c in chunks] + [0] * (world - len(chunks))
            bounds = shard_rows(rows, world)
            assert [stop - start for start, stop in bounds] == expected
            assert bounds[0][0] == 0 and bounds[-1][1] == rows


def test_matrix_cost_uses_the_trained_matrix_shape():
    assert matrix_cost((64, 16)) == 64 * 16 * 16
    assert matrix_cost((3, 64, 16)) == 3 * 64 * 16 * 16
    assert matrix_cost((8, 3, 3, 3)) == 8 * 27 * 8


def test_parameters_on_different_devices_raise():
    with pytest.raises(ValueError, match="different devices"):
        check_same_device([torch.zeros(2), torch.zeros(2, device="meta")])


def test_without_torch_distributed_the_step_is_local():
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    assert resolve_process_group(None) is None
    assert resolve_process_group("local") is None
    with pytest.raises(RuntimeError, match="not initialized"):
        resolve_process_group(object())


def test_distribute_model_rejects_unknown_mode():
    from aurora_opt.data_parallel import distribute_model

    with pytest.raises(ValueError, match="unknown data-parallel mode"):
        distribute_model(nn.Linear(2, 2), "zero3")


def test_finish_distributed_without_a_process_group_does_nothing():
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    finish_distributed()
    assert not dist.is_initialized()
