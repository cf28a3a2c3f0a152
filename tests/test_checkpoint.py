"""Checkpoints: atomic writes, bitwise-equal resume on CPU, and fallback past a damaged checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from aurora_opt.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_latest_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from aurora_opt.train.data import Corpus
from aurora_opt.train.trainer import StopRequest, TrainConfig, train

STEPS = 8


def tiny_config(**overrides) -> TrainConfig:
    fields = dict(
        optimizer="aurora",
        steps=STEPS,
        batch_size=2,
        seq_len=16,
        n_layer=1,
        n_head=2,
        d_model=16,
        mlp_expansion=4,
        log_every=2,
        eval_every=4,
        eval_batches=1,
        checkpoint_every=3,
        leverage_steps=(2, STEPS),
    )
    fields.update(overrides)
    return TrainConfig(**fields)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    tokens = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0))
    return Corpus(tokens[:3500], tokens[3500:], 256, "random bytes")


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """An uninterrupted Aurora run, and its checkpoint directory."""
    directory = tmp_path_factory.mktemp("full")
    return train(tiny_config(), corpus, checkpoint_dir=directory), directory


@pytest.fixture(scope="module")
def cut_at_7(corpus, tmp_path_factory) -> Path:
    """The same run stopped after step 7 (checkpoints at steps 6 and 7)."""
    directory = tmp_path_factory.mktemp("cut")
    stop = StopRequest()
    train(
        tiny_config(),
        corpus,
        checkpoint_dir=directory,
        stop=stop,
        progress=lambda step, record: stop(signal.SIGINT) if step == 7 else None,
    )
    return directory


def final_state(directory: Path) -> dict:
    payload, _ = load_latest_checkpoint(directory)
    return payload


def assert_same_run(a: dict, b: dict) -> None:
    """Model, optimizer state, diagnostics and recorded history equal bit for bit."""
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for state_a, state_b in zip(a["optimizers"], b["optimizers"]):
        for index, per_param in state_a["state"].items():
            for name, value in per_param.items():
                assert torch.equal(value, state_b["state"][index][name]), (index, name)
    for name, shares in a["health"]["smoothed_shares"].items():
        assert torch.equal(shares, b["health"]["smoothed_shares"][name])
    assert a["result"]["history"] == b["result"]["history"]
    assert a["result"]["leverage"] == b["result"]["leverage"]
    assert a["result"]["layers"] == b["result"]["layers"]


@pytest.mark.parametrize("optimizer", ["aurora", "torch_muon"])
def test_resume_equals_uninterrupted_run(tmp_path, corpus, optimizer):
    config = tiny_config(optimizer=optimizer)
    full = train(config, corpus, checkpoint_dir=tmp_path / "full")
    assert full.status == "complete"

    stop = StopRequest()

    def stop_at_5(step, record):
        if step == 5:
            stop(signal.SIGTERM)

    first = train(config, corpus, checkpoint_dir=tmp_path / "cut", stop=stop, progress=stop_at_5)
    assert first.status == "interrupted" and first.step == 5
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["step-00000005.ckpt", "step-00000003.ckpt"]
    resumed = train(config, corpus, checkpoint_dir=tmp_path / "cut", resume=True)
    assert resumed.status == "complete" and resumed.history == full.history
    assert resumed.final["val_loss"] == full.final["val_loss"]
    assert_same_run(final_state(tmp_path / "full"), final_state(tmp_path / "cut"))


def test_a_real_signal_stops_the_run_with_a_checkpoint(tmp_path, corpus):
    stop = StopRequest()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        result = train(
            tiny_config(),
            corpus,
            checkpoint_dir=tmp_path,
            stop=stop,
            progress=lambda step, record: os.kill(os.getpid(), signal.SIGTERM) if step == 2 else None,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.status == "interrupted" and result.step == 2
    assert read_checkpoint(list_checkpoints(tmp_path)[0])["result"]["step"] == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, corpus, full_run, cut_at_7, damage):
    full, full_dir = full_run
    shutil.copytree(cut_at_7, tmp_path / "cut")
    newest = list_checkpoints(tmp_path / "cut")[0]
    assert newest.name == "step-00000007.ckpt"
    raw = newest.read_bytes()
    if damage == "truncate":
        newest.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        middle = len(raw) // 2
        newest.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :])
    else:
        newest.write_bytes(b"not a checkpoint at all")
    expected = {"truncate": "truncated", "flip": "checksum mismatch", "garbage": "bad header"}[damage]
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint(newest)

    warnings: list[str] = []
    resumed = train(tiny_config(), corpus, checkpoint_dir=tmp_path / "cut", resume=True, warn=warnings.append)
    assert len(warnings) == 1 and expected in warnings[0] and "previous checkpoint" in warnings[0]
    assert (tmp_path / "cut" / "step-00000007.ckpt.corrupt").exists()  # kept aside for inspection
    assert resumed.history == full.history  # continued from step 6 and reached the same result
    assert_same_run(final_state(full_dir), final_state(tmp_path / "cut"))


def test_atomic_save_keeps_the_two_newest(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint({"step": step, "weights": torch.full((3,), float(step))}, tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003.ckpt", "step-00000002.ckpt"]
    assert not list(tmp_path.glob("*.tmp"))
    payload, path = load_latest_checkpoint(tmp_path)
    assert payload["step"] == 3 and torch.equal(payload["weights"], torch.full((3,), 3.0))
    assert load_latest_checkpoint(tmp_path / "nothing-here") is None


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, corpus):
    train(tiny_config(steps=3), corpus, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different settings"):
        train(tiny_config(steps=3, lr=0.01), corpus, checkpoint_dir=tmp_path, resume=True)
