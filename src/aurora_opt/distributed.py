"""Sharing the spectral optimizers' orthogonalization across the ranks of a process group.

A spectral direction needs the whole momentum matrix, and computing it costs O(m·n·min(m, n)) per
matrix, so with W ranks each rank computes the directions of about 1/W of the work and the results
are exchanged. Two parameter layouts are supported:

- **replicated** (plain tensors, e.g. under ``DistributedDataParallel``): every rank holds every
  matrix and the same (already averaged) gradient. Each rank computes the directions of the
  matrices it owns; one ``all_gather`` hands every rank every direction, so all ranks apply the
  same bits and stay identical.
- **sharded** (FSDP2 ``fully_shard``: DTensor parameters with placement ``Shard(0)`` on a 1-D
  mesh, ``torch.chunk`` row blocks, possibly uneven or empty): the momentum shards of each matrix
  go to its owner in one ``all_to_all``, the owner assembles the whole matrix and computes its
  direction, and a second ``all_to_all`` returns to every rank its rows of the direction.

Owners are chosen by the longest-processing-time rule on the cost B·m·n·min(m, n), so the work is
balanced even when shapes differ. State a direction function writes (NorMuon's per-row
``neuron_variance``) is updated on the owner and sent with the direction to every rank, so every
rank holds an identical, complete copy: a plain (replicated) tensor, which
``torch.distributed.checkpoint`` saves once and loads on every rank.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .matrices import all_finite, matrix_shape

#: ``process_group=LOCAL`` makes an optimizer step its parameters alone even when
#: torch.distributed is initialized (e.g. independent models on each rank).
LOCAL = "local"

#: ``compute(indices, momenta)``: the directions (``[B, m, n]`` each) of the matrices with those
#: indices, given their whole parameter-shaped momenta; updates their direction state in place.
ComputeFn = Callable[[list[int], list[Tensor]], list[Tensor]]


def _dtensor_type() -> type | None:
    if not dist.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (FSDP2 parameters are)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (an alias: in-place changes reach the DTensor), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


def resolve_process_group(process_group: Any) -> Any | None:
    """The process group the work is shared over, or ``None`` to step alone.

    ``None``: the default group when torch.distributed is initialized, else step alone.
    ``"local"``: step alone. A ``ProcessGroup``: that group; this rank must belong to it.
    """
    if process_group == LOCAL:
        return None
    initialized = dist.is_available() and dist.is_initialized()
    if process_group is None:
        return dist.group.WORLD if initialized else None
    if not initialized:
        raise RuntimeError("process_group was given but torch.distributed is not initialized")
    if dist.get_rank(process_group) < 0:
        raise ValueError(
            f"process group mismatch: global rank {dist.get_rank()} is not a member of the process_group "
            f"passed to the optimizer (ranks {dist.get_process_group_ranks(process_group)}); create the "
            "optimizer only on the ranks of its group"
        )
    return process_group


def matrix_cost(shape: Sequence[int]) -> int:
    """Relative cost of a spectral direction: B·m·n·min(m, n) multiply-adds per polar iteration."""
    batch, m, n = matrix_shape(shape)
    return batch * m * n * min(m, n)


def assign_owners(costs: Sequence[int], world_size: int) -> list[int]:
    """Owner rank of each matrix: largest cost first, each to the least-loaded rank (ties: lowest).

    Deterministic, so every rank computes the same assignment without communicating. The heaviest
    rank carries at most 4/3 of the optimum (Graham's bound for this rule).
    """
    load = [0] * world_size
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += costs[index]
    return owners


def shard_rows(rows: int, world_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of dim 0 held by each rank under ``Shard(0)`` (``torch.chunk`` blocks).

    Blocks of ceil(rows / W) rows; the last ranks may hold fewer or none.
    """
    block = -(-rows // world_size)
    return [(min(r * block, rows), min((r + 1) * block, rows)) for r in range(world_size)]


def check_same_device(tensors: Sequence[Tensor], what: str = "parameters of one param group") -> torch.device:
    """The one device all ``tensors`` are on; ``ValueError`` if they are on several."""
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1:
        raise ValueError(
            f"{what} are on different devices ({', '.join(devices)}); the distributed step packs them into one "
            "buffer per collective: move the model to one device before creating the optimizer"
        )
    return tensors[0].device


def check_sharding(params: Sequence[Tensor], process_group: Any) -> None:
    """Require every parameter of a group to be plain, or every one an FSDP2 ``Shard(0)`` DTensor.

    The DTensors' mesh must span exactly the ranks of ``process_group``, in the same order.
    """
    sharded = [is_dtensor(p) for p in params]
    if not any(sharded):
        return
    if not all(sharded):
        raise ValueError(
            "a param group mixes DTensor (FSDP2-sharded) and plain parameters; the spectral step shards work "
            "differently for each: put them in separate param groups (or shard the whole model with fully_shard)"
        )
    from torch.distributed.tensor import Shard

    group_ranks = dist.get_process_group_ranks(process_group)
    for p in params:
        mesh = p.device_mesh
        if mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise ValueError(
                f"unsupported DTensor layout {tuple(p.placements)} on a {mesh.ndim}-D mesh: the spectral step "
                "supports FSDP2's Shard(0) on a 1-D mesh (fully_shard without HSDP)"
            )
        if p.grad is not None and tuple(p.grad.placements) != (Shard(0),):
            raise ValueError(f"gradient placement {tuple(p.grad.placements)} differs from its parameter's (Shard(0))")
        mesh_ranks = dist.get_process_group_ranks(mesh.get_group())
        if mesh_ranks != group_ranks:
            raise ValueError(
                f"process group mismatch: the parameters are sharded over ranks {mesh_ranks} but the optimizer's "
                f"process_group has ranks {group_ranks}; pass process_group=mesh.get_group() (or leave it unset)"
            )


def finite_flags(grads: Sequence[Tensor], process_group: Any | None) -> Tensor:
    """Per gradient, whether every entry is finite on every rank (bool ``[len(grads)]``).

    Sharded (DTensor) gradients are checked on the local shard, then combined with one
    ``all_reduce`` so all ranks agree on whether to skip or raise; replicated gradients are the
    same on every rank and need no communication.
    """
    finite = torch.stack([all_finite(local_tensor(g)) for g in grads])
    if process_group is not None and any(is_dtensor(g) for g in grads):
        flags = finite.to(torch.uint8)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=process_group)
        finite = flags.bool()
    return finite


def _communication_device(device: torch.device, process_group: Any) -> torch.device:
    if dist.get_backend(process_group) == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group uses NCCL but the parameters are on {device}; use gloo for CPU training")
    return device


def check_same_work(
    shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype], device: torch.device, process_group: Any
) -> None:
    """Raise on every rank unless all ranks step the same list of matrices (shapes and dtypes).

    One tiny ``all_gather`` per param group; it turns a silent mismatch (ranks that disagree about
    which parameters have gradients, or a process group that does not match the model) into an
    error instead of a hang or a wrong result.
    """
    signature = repr([(tuple(s), str(d)) for s, d in zip(shapes, dtypes)]).encode()
    mine = torch.tensor([len(shapes), zlib.crc32(signature)], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(gathered, mine, group=process_group)
    counts = [int(g[0]) for g in gathered]
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(
            "process group mismatch: the ranks of the optimizer's process group do not step the same matrices "
            f"(matrices with a gradient per rank: {counts}). Every rank of the group must hold the same "
            "parameters (replicated, or sharded by the same fully_shard) and get gradients for the same ones"
        )


def _buffer_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The narrowest dtype that holds every one of ``dtypes`` exactly."""
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    return result


def replicated_directions(
    momenta: Sequence[Tensor],
    param_dtypes: Sequence[torch.dtype],
    direction_state: Sequence[Sequence[Tensor]],
    compute: ComputeFn,
    process_group: Any,
) -> list[Tensor]:
    """Directions of replicated matrices, each computed once in the group and shared by all_gather.

    ``momenta``: the parameter-shaped momenta (identical on every rank). Returns each direction in
    its parameter's shape and dtype, bit-identical on every rank; ``direction_state`` tensors end
    with the owner's values on every rank.
    """
    world_size = dist.get_world_size(process_group)
    rank = dist.get_rank(process_group)
    device = _communication_device(check_same_device(momenta), process_group)
    owners = assign_owners([matrix_cost(M.shape) for M in momenta], world_size)
    dtype = _buffer_dtype([*param_dtypes, *(s.dtype for states in direction_state for s in states)])

    mine = [i for i, owner in enumerate(owners) if owner == rank]
    pieces = []
    for i, U in zip(mine, compute(mine, [momenta[i] for i in mine])):
        pieces.append(U.reshape(-1).to(param_dtypes[i]).to(dtype))
        pieces.extend(s.reshape(-1).to(dtype) for s in direction_state[i])

    def numel(i: int) -> int:
        return momenta[i].numel() + sum(s.numel() for s in direction_state[i])

    sizes = [sum(numel(i) for i, owner in enumerate(owners) if owner == r) for r in range(world_size)]
    send = torch.zeros(max(sizes), dtype=dtype, device=device)
    if pieces:
        torch.cat(pieces, out=send[: sizes[rank]])
    received = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(received, send, group=process_group)

    offsets = [0] * world_size
    directions: list[Tensor] = []
    for i, owner in enumerate(owners):
        buffer, offset = received[owner], offsets[owner]
        directions.append(buffer[offset : offset + momenta[i].numel()].view(momenta[i].shape).to(param_dtypes[i]))
        offset += momenta[i].numel()
        for s in direction_state[i]:
            if owner != rank:
                s.copy_(buffer[offset : offset + s.numel()].view(s.shape))
            offset += s.numel()
        offsets[owner] = offset
    return directions


class _RowBlocks:
    """Where the rows of row-sharded matrices live: the owner of each matrix and every rank's block.

    Every rank builds the same layout from the global shapes alone (no communication).
    """

    def __init__(self, global_shapes: Sequence[torch.Size], world_size: int) -> None:
        self.shapes = list(global_shapes)
        self.world_size = world_size
        self.owners = assign_owners([matrix_cost(shape) for shape in global_shapes], world_size)
        self.bounds = [shard_rows(shape[0], world_size) for shape in global_shapes]
        self.row_numel = [math.prod(shape[1:]) for shape in global_shapes]

    def rows(self, i: int, rank: int) -> int:
        """Rows of matrix ``i`` held by ``rank``."""
        start, stop = self.bounds[i][rank]
        return stop - start

    def numel(self, i: int, rank: int) -> int:
        """Entries of matrix ``i`` held by ``rank``."""
        return self.rows(i, rank) * self.row_numel[i]

    def owned_by(self, rank: int) -> list[int]:
        """Indices of the matrices ``rank`` owns, ascending."""
        return [i for i, owner in enumerate(self.owners) if owner == rank]

    def by_owner(self) -> list[int]:
        """All indices grouped by owner rank, ascending within an owner: the order of every buffer."""
        return sorted(range(len(self.shapes)), key=lambda i: self.owners[i])


def _exchange(
    pieces: Sequence[Tensor],
    send_sizes: list[int],
    recv_sizes: list[int],
    dtype: torch.dtype,
    device: torch.device,
    process_group: Any,
) -> Tensor:
    """One ``all_to_all``: ``pieces`` flattened in order, ``send_sizes[r]`` entries to rank ``r``."""
    send = torch.cat(list(pieces) or [torch.empty(0, dtype=dtype, device=device)])
    received = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
    dist.all_to_all_single(received, send, recv_sizes, send_sizes, group=process_group)
    return received


def _assemble_on_owner(
    local_momenta: Sequence[Tensor],
    layout: _RowBlocks,
    rank: int,
    dtype: torch.dtype,
    device: torch.device,
    process_group: Any,
) -> list[Tensor]:
    """Send every momentum shard to its matrix's owner; return the whole momenta this rank owns.

    Each rank sends its blocks grouped by owner; the owner receives, from each rank in turn, that
    rank's block of each matrix it owns, and stacks the blocks in rank order (``torch.chunk``'s).
    """
    ranks = range(layout.world_size)
    mine = layout.owned_by(rank)
    send_sizes = [sum(layout.numel(i, rank) for i in layout.owned_by(r)) for r in ranks]
    recv_sizes = [sum(layout.numel(i, r) for i in mine) for r in ranks]
    pieces = [local_momenta[i].reshape(-1).to(dtype) for i in layout.by_owner()]
    received = _exchange(pieces, send_sizes, recv_sizes, dtype, device, process_group)

    blocks: dict[int, list[Tensor]] = {i: [] for i in mine}
    offset = 0
    for r in ranks:
        for i in mine:
            size = layout.numel(i, r)
            blocks[i].append(received[offset : offset + size].view(layout.rows(i, r), *layout.shapes[i][1:]))
            offset += size
    return [torch.cat(blocks[i]) for i in mine]


def _return_rows(
    directions: Sequence[Tensor],
    local_shapes: Sequence[torch.Size],
    layout: _RowBlocks,
    rank: int,
    param_dtypes: Sequence[torch.dtype],
    direction_state: Sequence[Sequence[Tensor]],
    dtype: torch.dtype,
    device: torch.device,
    process_group: Any,
) -> list[Tensor]:
    """Send each rank its rows of the directions this rank owns, with their direction state.

    ``directions``: the whole directions of ``layout.owned_by(rank)``. Returns this rank's rows of
    every matrix's direction (in ``local_shapes``) and copies the owners' state into ``direction_state``.
    """
    ranks = range(layout.world_size)
    mine = layout.owned_by(rank)
    state_numel = [sum(s.numel() for s in states) for states in direction_state]
    pieces_to: list[list[Tensor]] = [[] for _ in ranks]
    for i, U in zip(mine, directions):
        U = U.reshape(layout.shapes[i]).to(param_dtypes[i])
        for r in ranks:
            start, stop = layout.bounds[i][r]
            pieces_to[r].append(U[start:stop].reshape(-1).to(dtype))
            pieces_to[r].extend(s.reshape(-1).to(dtype) for s in direction_state[i])
    send_sizes = [sum(layout.numel(i, r) + state_numel[i] for i in mine) for r in ranks]
    recv_sizes = [sum(layout.numel(i, rank) + state_numel[i] for i in layout.owned_by(r)) for r in ranks]
    pieces = [piece for to_rank in pieces_to for piece in to_rank]
    received = _exchange(pieces, send_sizes, recv_sizes, dtype, device, process_group)

    local: list[Tensor | None] = [None] * len(layout.shapes)
    offset = 0
    for i in layout.by_owner():
        size = layout.numel(i, rank)
        local[i] = received[offset : offset + size].view(local_shapes[i]).to(param_dtypes[i])
        offset += size
        for s in direction_state[i]:
            s.copy_(received[offset : offset + s.numel()].view(s.shape))
            offset += s.numel()
    return local  # type: ignore[return-value]


def sharded_directions(
    local_momenta: Sequence[Tensor],
    global_shapes: Sequence[torch.Size],
    param_dtypes: Sequence[torch.dtype],
    direction_state: Sequence[Sequence[Tensor]],
    compute: ComputeFn,
    process_group: Any,
) -> list[Tensor]:
    """Directions of row-sharded matrices (FSDP2 ``Shard(0)``): gather on owners, compute, scatter back.

    ``local_momenta``: this rank's ``torch.chunk`` block of each parameter-shaped momentum (maybe
    empty). Returns this rank's rows of each direction, in the parameter's dtype; every rank's
    ``direction_state`` ends with the owner's values. Two ``all_to_all``: momentum rows to the
    owners, direction rows (and state) back.
    """
    rank = dist.get_rank(process_group)
    device = _communication_device(check_same_device(local_momenta), process_group)
    layout = _RowBlocks(global_shapes, dist.get_world_size(process_group))
    for i, M in enumerate(local_momenta):
        if M.shape[0] != layout.rows(i, rank):
            raise ValueError(
                f"a shard of a {tuple(global_shapes[i])} parameter has {M.shape[0]} rows on rank {rank}, not the "
                f"{layout.rows(i, rank)} of torch.chunk's Shard(0) layout"
            )
    dtype = _buffer_dtype([*param_dtypes, *(s.dtype for states in direction_state for s in states)])

    mine = layout.owned_by(rank)
    whole = _assemble_on_owner(local_momenta, layout, rank, dtype, device, process_group)
    directions = compute(mine, [M.to(param_dtypes[i]) for i, M in zip(mine, whole)])
    local_shapes = [M.shape for M in local_momenta]
    return _return_rows(
        directions, local_shapes, layout, rank, param_dtypes, direction_state, dtype, device, process_group
    )
