"""Crash-safe checkpoints: written atomically (temporary file, fsync, rename), verified on load by a
SHA-256 of their payload; a corrupt newest checkpoint is set aside and the previous one is used."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MAGIC = b"AURORA-OPT-CHECKPOINT 1\n"
SUFFIX = ".ckpt"
#: checkpoints kept per run directory: the newest and the one before it, should the newest be damaged
KEEP = 2


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or not a checkpoint; the message names the file."""


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}{SUFFIX}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"step-*{SUFFIX}"), reverse=True)


def save_checkpoint(payload: dict[str, Any], directory: Path, step: int, *, keep: int = KEEP) -> Path:
    """Write ``payload`` as the checkpoint of ``step``; no reader ever sees a half-written file.

    Layout: MAGIC, the payload's SHA-256 (hex) and byte length on one line, then the ``torch.save``
    bytes. Older checkpoints beyond the newest ``keep`` are removed once the new one is in place.
    """
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    final = checkpoint_path(directory, step)
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    with temporary.open("wb") as f:
        f.write(MAGIC)
        f.write(f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode())
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, final)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return final


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify one checkpoint; raise :class:`CheckpointError` saying what is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an aurora-opt checkpoint (bad header)")
    line_end = raw.find(b"\n", len(MAGIC))
    try:
        digest, length = raw[len(MAGIC) : line_end].decode().split()
        length_bytes = int(length)
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: damaged checkpoint header") from None
    data = raw[line_end + 1 :]
    if len(data) != length_bytes:
        raise CheckpointError(f"{path} is truncated ({len(data)} of {length_bytes} payload bytes)")
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path} cannot be unpickled: {err}") from None


def load_latest_checkpoint(
    directory: Path, warn: Callable[[str], None] = lambda message: None
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that verifies, or ``None`` if there is none.

    Each damaged newer file is reported through ``warn`` and renamed to ``*.corrupt`` (kept for
    inspection, out of the way of later saves); the search goes on to the previous one.
    """
    for path in list_checkpoints(directory):
        try:
            return read_checkpoint(path), path
        except CheckpointError as err:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            warn(f"{err}; moved it to {aside.name} and trying the previous checkpoint")
    return None
