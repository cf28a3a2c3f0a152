"""Data loaders on small files and shards written here, good and corrupt."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora_opt.train.data import (
    SHARD_MAGIC,
    SHARD_VERSION,
    DataError,
    batch_generator,
    get_batch,
    load_corpus,
    read_shard,
)


def write_shard(
    path: Path, tokens: list[int], *, magic: int = SHARD_MAGIC, version: int = SHARD_VERSION, count: int | None = None
) -> Path:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, version, len(tokens) if count is None else count)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes())
    return path


def test_text_file_is_byte_tokens_with_a_held_out_tail(tmp_path):
    text = ("def f(x):\n    return x + 1\n" * 40).encode()
    path = tmp_path / "code.py"
    path.write_bytes(text)
    corpus = load_corpus(path)
    assert corpus.vocab_size == 256
    joined = torch.cat([corpus.train, corpus.val])
    assert bytes(joined.to(torch.uint8).tolist()) == text  # nothing lost or reordered
    assert corpus.val.numel() == len(text) - len(text) * 90 // 100


def test_directory_split_is_deterministic_and_skips_hidden_files(tmp_path):
    for i in range(40):
        (tmp_path / f"file{i:02d}.txt").write_text(f"text number {i}\n" * 5)
    (tmp_path / ".hidden").write_text("SECRET" * 100)
    first, second = load_corpus(tmp_path), load_corpus(tmp_path)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    assert first.val.numel() > 0 and first.train.numel() > first.val.numel()
    everything = bytes(torch.cat([first.train, first.val]).to(torch.uint8).tolist())
    assert b"SECRET" not in everything
    assert everything.count(b"text number") == 40 * 5


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.txt", "not found"),
        (lambda d: (d / "empty.txt").write_bytes(b"") and None or d / "empty.txt", "too little"),
        (lambda d: (d / "emptydir").mkdir() or d / "emptydir", "no files"),
    ],
)
def test_unusable_text_input(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_corpus(make(tmp_path))


def test_too_little_text_for_a_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("x" * 50)
    with pytest.raises(DataError, match="too little"):
        load_corpus(path, min_tokens=130)


def test_shards_good(tmp_path):
    train_tokens = list(range(0, 3000, 3))
    val_tokens = [50256, 7, 8, 9, 10]
    write_shard(tmp_path / "fineweb_train_000001.bin", train_tokens)
    write_shard(tmp_path / "fineweb_val_000000.bin", val_tokens)
    corpus = load_corpus(tmp_path)
    assert corpus.train.tolist() == train_tokens
    assert corpus.val.tolist() == val_tokens
    assert corpus.vocab_size == 50257
    single = load_corpus(tmp_path / "fineweb_train_000001.bin")  # no val shard: last 10 % held out
    assert torch.cat([single.train, single.val]).tolist() == train_tokens
    assert single.val.numel() == 100


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"magic": 12345}, "bad shard magic 12345"),
        ({"version": 7}, "unsupported shard version 7"),
        ({"count": 999}, "declares 999 tokens but holds 10"),
        ({"count": 0}, "declares 0 tokens"),
    ],
)
def test_shards_with_bad_headers(tmp_path, kwargs, message):
    path = write_shard(tmp_path / "bad.bin", list(range(10)), **kwargs)
    with pytest.raises(DataError, match=message):
        read_shard(path)
    with pytest.raises(DataError, match=message):
        load_corpus(path)


def test_truncated_shard_header(tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(np.array([SHARD_MAGIC, SHARD_VERSION], dtype=np.int32).tobytes())
    with pytest.raises(DataError, match="truncated shard header"):
        load_corpus(path)


def test_stdlib_corpus_is_found_and_split():
    corpus = load_corpus(None)
    assert corpus.source == f"python-stdlib {platform.python_version()}"  # named, not located
    total = corpus.train.numel() + corpus.val.numel()
    assert total > 1_000_000  # the stdlib's .py files are megabytes on every CPython install
    assert 0.03 < corpus.val.numel() / total < 0.3  # about 10 % of files by hash


def test_batches_are_shifted_windows_fixed_by_seed_and_step():
    tokens = torch.arange(1000)
    x, y = get_batch(tokens, 4, 16, batch_generator(seed=3, step=7))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = get_batch(tokens, 4, 16, batch_generator(seed=3, step=7))
    x3, _ = get_batch(tokens, 4, 16, batch_generator(seed=3, step=8))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
