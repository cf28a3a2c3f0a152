"""examples/train_gpt2.py on CPU with the tiny config: modded-nanoGPT shards and the default byte corpus."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from aurora_opt.train.data import SHARD_HEADER_INTS, SHARD_MAGIC, SHARD_VERSION

#: how far the mean loss over 512 held-out uniform tokens may fall below log 256 by chance
RANDOM_TOKENS_NOISE = 0.1
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_gpt2.py"


@pytest.fixture(scope="module")
def train_gpt2():
    spec = importlib.util.spec_from_file_location("train_gpt2", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(SHARD_HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    path.write_bytes(header.tobytes() + tokens.astype(np.uint16).tobytes())


def test_tiny_run_on_shards_writes_log_and_result(tmp_path, train_gpt2):
    rng = np.random.default_rng(0)
    data = tmp_path / "shards"
    data.mkdir()
    write_shard(data / "fineweb_train_000001.bin", rng.integers(0, 256, 20_000))
    write_shard(data / "fineweb_val_000000.bin", rng.integers(0, 256, 4_000))
    out = tmp_path / "run"
    argv = [
        "--config",
        "tiny",
        "--data",
        str(data),
        "--optimizer",
        "aurora",
        "--lr",
        "0.03",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--log-every",
        "2",
        "--val-every",
        "4",
        "--val-tokens",
        "512",
        "--diag-every",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert train_gpt2.main(argv) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [2, 4]
    assert log[0]["val_loss"] is None and log[1]["val_loss"] is not None
    for entry in log:
        assert 0.0 <= entry["starved_fraction"] <= 1.0 and entry["tokens_per_s"] > 0
        assert np.isfinite(entry["train_loss"])
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["data"] == "fineweb_train_000001.bin,fineweb_val_000000.bin"
    assert result["config"]["lr"] == 0.03 and result["config"]["vocab_size"] == 256
    assert result["final"]["val_loss"] == log[-1]["val_loss"] and result["final"]["step"] == 4
    # held-out uniform random tokens cannot be predicted: the loss stays above their entropy log 256,
    # up to the sampling noise of 512 validation tokens
    assert result["final"]["val_loss"] > np.log(256) - RANDOM_TOKENS_NOISE
    assert result["provenance"]["command"].startswith("python examples/train_gpt2.py --config tiny")
    assert str(tmp_path) in result["provenance"]["command"]  # outside the checkout: kept as given


def test_tiny_run_on_the_byte_corpus_and_the_time_budget(tmp_path, train_gpt2, capsys):
    out = tmp_path / "run"
    argv = [
        "--config",
        "tiny",
        "--optimizer",
        "muon",
        "--steps",
        "50",
        "--batch-size",
        "2",
        "--val-tokens",
        "256",
        "--max-minutes",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert train_gpt2.main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    # a zero budget stops before the first step, after one evaluation
    assert result["final"]["step"] == 0 and result["final"]["stopped_by_time_budget"] is True
    assert result["config"]["data"].startswith("python-stdlib ")
    assert abs(result["final"]["val_loss"] - np.log(256)) < 1.0  # an untrained byte model


def test_token_stream_reads_consecutive_windows_per_rank(train_gpt2):
    tokens = np.arange(100, dtype=np.uint16)
    ranks = [train_gpt2.TokenStream([tokens], batch=2, seq_len=3, rank=r, world=2) for r in range(2)]
    x0, y0 = ranks[0].next()
    x1, _ = ranks[1].next()
    assert x0.flatten().tolist() == [0, 1, 2, 3, 4, 5] and y0.flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert x1.flatten().tolist() == [6, 7, 8, 9, 10, 11]
    assert ranks[0].next()[0].flatten().tolist() == [12, 13, 14, 15, 16, 17]
