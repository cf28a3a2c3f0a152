"""A small byte-level language model trained by Lightning with NorMuon, neuron health in its loggers.

    pip install 'aurora-opt[lightning]'
    python examples/lightning_byte_lm.py --steps 200        # CSV logs under runs/lightning

Nothing is downloaded (the text is the Python standard library's own source). The optimizer is
returned from ``configure_optimizers`` as usual; ``NeuronHealthCallback`` sends
``neuron_health/...`` metrics to every logger of the Trainer (CSV here; TensorBoard, W&B alike).
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from aurora_opt import get_optimizer, param_groups
from aurora_opt.integrations.lightning import NeuronHealthCallback
from aurora_opt.train.data import stdlib_prefix


class ByteLM(pl.LightningModule):
    """Embedding, one residual GELU MLP (``up`` is tall: 4·d × d), norm and head; no attention."""

    def __init__(self, optimizer: str = "normuon", lr: float = 0.02, width: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(256, width)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.lm_head = nn.Linear(width, 256, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        x = x + self.down(F.gelu(self.up(self.norm(x))))
        return self.lm_head(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        loss = F.cross_entropy(self(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return get_optimizer(self.hparams.optimizer)(param_groups(self), lr=self.hparams.lr, adamw_lr=3e-3)


def loader(seq_len: int = 33, batch_size: int = 16) -> torch.utils.data.DataLoader:
    tokens = stdlib_prefix(200_000)
    windows = tokens[: tokens.numel() // seq_len * seq_len].view(-1, seq_len)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(windows), batch_size=batch_size, shuffle=True)


def build_trainer(steps: int, logger, log_every_n_steps: int = 10) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=logger,
        log_every_n_steps=log_every_n_steps,
        callbacks=[NeuronHealthCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="normuon")
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()
    torch.manual_seed(0)
    trainer = build_trainer(args.steps, pl.loggers.CSVLogger("runs", name="lightning"))
    trainer.fit(ByteLM(args.optimizer, args.lr), loader())
    callback = next(c for c in trainer.callbacks if isinstance(c, NeuronHealthCallback))
    print({k: round(v, 4) for k, v in callback.last_metrics.items() if k.count("/") == 1})


if __name__ == "__main__":
    main()
