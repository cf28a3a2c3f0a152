"""Training text as token tensors: the Python standard library's source (default), text files, or
modded-nanoGPT ``.bin`` shards; a deterministic train/validation split and step-seeded batches."""

from __future__ import annotations

import platform
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: modded-nanoGPT shard format: 256 int32 header (magic, version, token count), then uint16 tokens
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
#: stdlib folders left out of the default corpus (tests and vendored tools, mostly generated data)
STDLIB_EXCLUDED = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__"})
#: percent of files (by a hash of their relative path) held out for validation
VAL_PERCENT = 10


class DataError(ValueError):
    """The data given cannot be used (missing path, empty corpus, bad shard); the message says why."""


@dataclass(frozen=True)
class Corpus:
    """Token ids (int64 in [0, vocab_size)) for training and validation, and where they came from."""

    train: Tensor
    val: Tensor
    vocab_size: int
    source: str

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "vocab_size": self.vocab_size,
            "train_tokens": int(self.train.numel()),
            "val_tokens": int(self.val.numel()),
        }


def _is_val(relative_path: str) -> bool:
    """Deterministic held-out choice: CRC32 of the relative path, same on every machine and run."""
    return zlib.crc32(relative_path.encode()) % 100 < VAL_PERCENT


def _bytes_corpus(files: list[tuple[str, Path]], source: str, min_tokens: int) -> Corpus:
    train_parts: list[bytes] = []
    val_parts: list[bytes] = []
    for relative, path in files:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror}") from None
        (val_parts if _is_val(relative) else train_parts).append(data)
    train, val = b"".join(train_parts), b"".join(val_parts)
    if not val and len(train) >= 2 * min_tokens:
        cut = len(train) * (100 - VAL_PERCENT) // 100  # one file, or every file hashed to train
        train, val = train[:cut], train[cut:]
    for name, part in (("training", train), ("validation", val)):
        if len(part) < min_tokens:
            raise DataError(
                f"{source}: {len(train) + len(val)} bytes of text is too little "
                f"(the {name} split needs at least {min_tokens} bytes)"
            )
    as_tensor = lambda b: torch.from_numpy(np.frombuffer(b, dtype=np.uint8).astype(np.int64))  # noqa: E731
    return Corpus(as_tensor(train), as_tensor(val), 256, source)


def stdlib_corpus(min_tokens: int = 2) -> Corpus:
    """The ``.py`` files of this Python's standard library (about 11 MB), as byte tokens."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (path.relative_to(root).as_posix(), path)
        for path in root.rglob("*.py")
        if not STDLIB_EXCLUDED.intersection(path.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"no Python source found under the standard library path {root}")
    return _bytes_corpus(files, stdlib_name(), min_tokens)


def stdlib_name() -> str:
    """How results name the default corpus: by Python version, not by its local path."""
    return f"python-stdlib {platform.python_version()}"


def stdlib_prefix(limit: int) -> Tensor:
    """The first ``limit`` bytes of the standard library's top-level ``.py`` files, in name order,
    as byte tokens: a fixed text that is quick to read (examples, soak runs)."""
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= limit:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:limit]), dtype=torch.uint8).long()


def text_corpus(path: Path, min_tokens: int = 2) -> Corpus:
    """A text file, or every file under a directory (hidden ones left out), as byte tokens."""
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted(
            (p.relative_to(path).as_posix(), p)
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        raise DataError(f"data path not found: {path}")
    if not files:
        raise DataError(f"no files under {path}")
    return _bytes_corpus(files, path.name, min_tokens)


def open_shard(path: Path) -> np.ndarray:
    """The uint16 tokens of one modded-nanoGPT ``.bin`` shard, memory-mapped (nothing is read into
    memory until used), after checking its header and size."""
    try:
        with path.open("rb") as f:
            header = np.frombuffer(f.read(SHARD_HEADER_INTS * 4), dtype=np.int32)
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from None
    if header.size != SHARD_HEADER_INTS:
        raise DataError(f"{path}: truncated shard header ({header.size * 4} of {SHARD_HEADER_INTS * 4} bytes)")
    if header[0] != SHARD_MAGIC:
        raise DataError(f"{path}: bad shard magic {int(header[0])} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise DataError(f"{path}: unsupported shard version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    if count <= 0:
        raise DataError(f"{path}: shard declares {count} tokens")
    held = (size - SHARD_HEADER_INTS * 4) // 2
    if held != count:
        raise DataError(f"{path}: shard declares {count} tokens but holds {held}")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=SHARD_HEADER_INTS * 4, shape=(count,))


def read_shard(path: Path) -> Tensor:
    """Tokens of one modded-nanoGPT ``.bin`` shard (int64), after checking its header and size."""
    return torch.from_numpy(open_shard(path).astype(np.int64))


def shard_corpus(paths: list[Path], min_tokens: int = 2) -> Corpus:
    """Shards whose name contains ``val`` are validation, the rest training; with no such shard
    the last 10 % of the training tokens are held out."""
    if not paths:
        raise DataError("no .bin shards given")
    val_paths = [p for p in paths if "val" in p.name]
    train_paths = [p for p in paths if p not in val_paths]
    if not train_paths:
        raise DataError(f"only validation shards found: {', '.join(str(p) for p in val_paths)}")
    train = torch.cat([read_shard(p) for p in sorted(train_paths)])
    if val_paths:
        val = torch.cat([read_shard(p) for p in sorted(val_paths)])
    else:
        cut = train.numel() * (100 - VAL_PERCENT) // 100
        train, val = train[:cut], train[cut:]
    for name, part in (("training", train), ("validation", val)):
        if part.numel() < min_tokens:
            raise DataError(f"{paths[0].parent}: the {name} split has {part.numel()} tokens (need {min_tokens})")
    vocab_size = int(max(train.max(), val.max())) + 1
    return Corpus(train, val, vocab_size, ",".join(p.name for p in sorted(paths)))


def load_corpus(path: str | Path | None, min_tokens: int = 2) -> Corpus:
    """``None``: the standard library; a ``.bin`` file or a directory of them: shards; else text.

    ``min_tokens`` is the least each split must hold (a training window is seq_len + 1 tokens).
    Raises :class:`DataError` with a one-line message on any unusable input.
    """
    if path is None:
        return stdlib_corpus(min_tokens)
    path = Path(path)
    if path.is_file() and path.suffix == ".bin":
        return shard_corpus([path], min_tokens)
    if path.is_dir():
        shards = sorted(path.glob("*.bin"))
        if shards:
            return shard_corpus(shards, min_tokens)
    return text_corpus(path, min_tokens)


def get_batch(tokens: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows: inputs [B, T] and next-token targets [B, T]."""
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def batch_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator for step ``step``: batches depend only on (seed, step, stream), so a resumed run
    draws exactly the batches an uninterrupted one would."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)
