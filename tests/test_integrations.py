"""The Hugging Face Trainer, Lightning and GPT-2 checkpoints, run for a few steps against the real
libraries (the ``test`` extra installs them); each test is skipped, with the reason, where its
library cannot be imported. The logic they rely on is tested without them (tests/models.py)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import aurora_opt
from aurora_opt.diagnostics import NeuronHealth
from aurora_opt.integrations import optimizer_cls_and_kwargs
from aurora_opt.param_groups import is_in_out_linear
from models import TinyResNet


def import_or_skip(name: str):
    """``pytest.importorskip`` that also skips on a library that is installed but fails to load
    (e.g. a torchvision wheel built for another torch raises RuntimeError, and takes transformers
    and timm down with it)."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - any failure to import means the library is unusable here
        pytest.skip(f"{name} cannot be imported: {type(error).__name__}: {error}")


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """An example script as a module (its ``main()`` is not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_dataset(vocab: int, length: int, count: int):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(0, vocab, (count, length), generator=g)]


def test_hf_trainer_example_logs_neuron_health(tmp_path):
    import_or_skip("transformers")
    example = load_example("hf_trainer_llama")
    trainer = example.build_trainer(str(tmp_path), steps=4, logging_steps=2, width=16, layers=1, seq_len=16)
    model = trainer.model
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
    callback = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "NeuronHealthCallback")
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
    assert (
        set(snap.layer_starved) == {"transformer.h.0.mlp.c_fc"}
        and health.smoothed_shares["transformer.h.0.mlp.c_fc"].numel() == 64
    )


def test_lightning_example_logs_through_the_trainers_loggers():
    pl = import_or_skip("pytorch_lightning")
    example = load_example("lightning_byte_lm")

    class Recorder(pl.loggers.Logger):
        name, version = "recorder", 0

        def __init__(self):
            super().__init__()
            self.records = []

        def log_metrics(self, metrics, step=None):
            self.records.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    torch.manual_seed(0)
    recorder = Recorder()
    trainer = example.build_trainer(4, recorder, log_every_n_steps=2)
    trainer.fit(example.ByteLM(width=16), example.loader())
    health_records = [(step, m) for step, m in recorder.records if "neuron_health/starved_fraction" in m]
    assert [step for step, _ in health_records] == [2, 4]
    expected = {
        "neuron_health/up/starved_fraction",
        "neuron_health/up/row_norm_spread",
        "neuron_health/inactive_fraction",
    }
    assert expected <= set(health_records[-1][1])
    assert isinstance(trainer.optimizers[0], aurora_opt.NorMuon)


@pytest.mark.parametrize("library", ["torchvision", "timm", "none"])
def test_resnet_example_classifier_and_stem_go_to_adamw(library):
    """ResNet-18 from each library; "none": the example's training loop on tests/models.TinyResNet."""
    torch.manual_seed(0)
    if library == "none":
        model = TinyResNet()
    else:
        import_or_skip(library)
        model = load_example("resnet_vision").resnet18(library)
    groups = aurora_opt.param_groups(model)
    adamw = next(g for g in groups if g.get("algorithm") == "adamw")
    assert {"conv1.weight", "fc.weight", "fc.bias"} <= set(adamw["param_names"])
    assert ("layer1.0.weight" if library == "none" else "layer1.0.conv1.weight") in groups[0]["param_names"]
    losses = load_example("resnet_vision").train(model, steps=3, batch_size=8)
    assert all(map(torch.isfinite, torch.tensor(losses)))
