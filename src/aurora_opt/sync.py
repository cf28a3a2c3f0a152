"""When a step may read tensor values on the host.

Reading a value (``bool(t)``, ``t.item()``) synchronizes with the device: on CUDA it stalls the
pipeline, and a step captured in a CUDA graph cannot contain one. Loops that could stop early on a
value therefore stop early only where :func:`host_syncs_allowed`; elsewhere they run a fixed count
with masked updates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

_sync_free_everywhere = False


@contextlib.contextmanager
def sync_free() -> Iterator[None]:
    """Run steps as on CUDA on every device: no host synchronization (tests, CPU benchmarks)."""
    global _sync_free_everywhere
    previous, _sync_free_everywhere = _sync_free_everywhere, True
    try:
        yield
    finally:
        _sync_free_everywhere = previous


def host_syncs_allowed(t: Tensor) -> bool:
    """Whether the step may read values of ``t`` on the host: only on the CPU in eager mode.

    There a read costs nothing and lets loops stop early; on CUDA (and under ``torch.compile``,
    inside :func:`sync_free`) every loop runs a fixed count with masked updates, so the step never
    stalls the GPU and can be captured in a CUDA graph.
    """
    return t.device.type == "cpu" and not _sync_free_everywhere and not torch.compiler.is_compiling()
