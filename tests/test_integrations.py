"""The Hugging Face Trainer, Lightning and GPT-2 checkpoints, run for a few steps against the real
libraries (the ``test`` extra installs them); each test is skipped, with the reason, where its
library cannot be imported. The logic they rely on is tested without them (tests/models.py)."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import aurora_opt
from aurora_opt.diagnostics import NeuronHealth
from aurora_opt.integrations import optimizer_cls_and_kwargs
from aurora_opt.param_groups import is_in_out_linear


def import_or_skip(name: str):
    """``pytest.importorskip`` that also skips on a library that is installed but fails to load
    (e.g. a torchvision wheel built for another torch raises RuntimeError, and takes transformers
    and timm down with it)."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - any failure to import means the library is unusable here
        pytest.skip(f"{name} cannot be imported: {type(error).__name__}: {error}")


def token_dataset(vocab: int, length: int, count: int):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(0, vocab, (count, length), generator=g)]


def tiny_llama():
    transformers = import_or_skip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16,
    )
    torch.manual_seed(0)
    return transformers, transformers.LlamaForCausalLM(config)


def test_hf_trainer_with_optimizer_cls_and_kwargs_logs_neuron_health(tmp_path):
    transformers, model = tiny_llama()
    from aurora_opt.integrations.hf import NeuronHealthCallback

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=2, report_to="none",
        use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=token_dataset(64, 8, 16),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, "aurora", lr=0.02, adamw_lr=1e-3),
    )
    callback = NeuronHealthCallback(trainer)
    trainer.add_callback(callback)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer.train()

    optimizer = trainer.optimizer.optimizer  # inside accelerate's AcceleratedOptimizer
    assert isinstance(optimizer, aurora_opt.Aurora)
    adamw = next(g for g in optimizer.param_groups if g["algorithm"] == "adamw")
    assert "model.embed_tokens.weight" in adamw["param_names"] and "lm_head.weight" in adamw["param_names"]
    assert "model.layers.0.mlp.up_proj.weight" in optimizer.param_groups[0]["param_names"]
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)
    logged = [entry for entry in trainer.state.log_history if "neuron_health/starved_fraction" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    for layer in ("gate_proj", "up_proj"):
        assert f"neuron_health/model.layers.0.mlp.{layer}/starved_fraction" in logged[-1]
        assert f"neuron_health/model.layers.0.mlp.{layer}/row_norm_spread" in logged[-1]
    assert "neuron_health/model.layers.0.mlp/inactive_fraction" in logged[-1]
    assert logged[-1]["neuron_health/ms_per_step"] > 0
    assert callback.health.step == 4


def test_regrouping_warns_on_the_trainers_weight_decay_and_checks_parameters():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 16), nn.Linear(16, 10))
    cls, kwargs = optimizer_cls_and_kwargs(model, "muon", lr=0.01, head_names=("2",))
    assert kwargs == {"lr": 0.01} and issubclass(cls, aurora_opt.Muon)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() == 1]
    with pytest.warns(UserWarning, match="weight_decay is not applied"):
        optimizer = cls([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], **kwargs)
    assert optimizer.param_groups[0]["param_names"] == ["1.weight"]
    with pytest.raises(ValueError, match="not trainable parameters of the model"):
        cls([{"params": [nn.Parameter(torch.zeros(3, 3))]}], **kwargs)


def test_gpt2_conv1d_checkpoint_end_to_end():
    transformers = import_or_skip("transformers")
    from transformers.pytorch_utils import Conv1D

    assert is_in_out_linear(Conv1D(12, 4))
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    groups = aurora_opt.param_groups(model)
    in_out = next(g for g in groups if g.get("weight_layout") == "in_out")
    assert set(in_out["param_names"]) == {
        f"transformer.h.0.{name}.weight" for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    optimizer = aurora_opt.Aurora(groups)
    health = NeuronHealth(model).attach(optimizer)
    assert health.activation_sites == {"transformer.h.0.mlp": "transformer.h.0.mlp.c_proj"}
    batch = token_dataset(64, 8, 4)
    ids = torch.stack([b["input_ids"] for b in batch])
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    snap = health.measure()
    assert set(snap.layer_starved) == {"transformer.h.0.mlp.c_fc"} and health.smoothed_shares["transformer.h.0.mlp.c_fc"].numel() == 64


def test_lightning_callback_logs_through_the_trainers_loggers():
    pl = import_or_skip("pytorch_lightning")
    from aurora_opt.integrations.lightning import NeuronHealthCallback

    class Recorder(pl.loggers.Logger):
        def __init__(self):
            super().__init__()
            self.records = []

        name, version = "recorder", 0

        def log_metrics(self, metrics, step=None):
            self.records.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(32, 8)
            self.up = nn.Linear(8, 32)
            self.down = nn.Linear(32, 8)
            self.lm_head = nn.Linear(8, 32)

        def training_step(self, batch, batch_idx):
            (ids,) = batch
            x = self.embed(ids[:, :-1])
            logits = self.lm_head(x + self.down(torch.relu(self.up(x))))
            return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

        def configure_optimizers(self):
            return aurora_opt.NorMuon(aurora_opt.param_groups(self), lr=0.02)

    ids = torch.randint(0, 32, (16, 9), generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids), batch_size=4)
    recorder, callback = Recorder(), NeuronHealthCallback()  # logs at the Trainer's log_every_n_steps
    trainer = pl.Trainer(
        max_steps=4, log_every_n_steps=2, accelerator="cpu", logger=recorder, callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Module(), loader)
    health_records = [(step, m) for step, m in recorder.records if "neuron_health/starved_fraction" in m]
    assert [step for step, _ in health_records] == [2, 4]
    assert {"neuron_health/up/starved_fraction", "neuron_health/up/row_norm_spread", "neuron_health/inactive_fraction"} <= set(health_records[-1][1])
    assert callback.health.step == 4
