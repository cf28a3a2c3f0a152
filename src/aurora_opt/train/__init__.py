"""A small GPT, its data, and a trainer that records neuron health (used by the ``aurora-opt`` CLI)."""

from .checkpoint import CheckpointError, load_latest_checkpoint, read_checkpoint, save_checkpoint
from .data import Corpus, DataError, load_corpus
from .gpt import GPT, GPTConfig
from .trainer import RunResult, StopRequest, TrainConfig, build_optimizers, train

__all__ = [
    "GPT",
    "CheckpointError",
    "Corpus",
    "DataError",
    "GPTConfig",
    "RunResult",
    "StopRequest",
    "TrainConfig",
    "build_optimizers",
    "load_corpus",
    "load_latest_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "train",
]
