"""A small Llama trained by the Hugging Face Trainer with Aurora, neuron health in its logs.

    pip install 'aurora-opt[hf]'
    python examples/hf_trainer_llama.py --steps 200 --report-to tensorboard   # then: tensorboard --logdir runs/hf_llama

Nothing is downloaded: the model is a fresh tiny ``LlamaConfig`` and the text the Python standard
library's own source, as bytes. Two lines are specific to this library: ``optimizer_cls_and_kwargs``
(Aurora on the hidden matrices, AdamW on embeddings, head and norms, in one optimizer) and the
``NeuronHealthCallback`` (``neuron_health/...`` metrics at every logging step).
"""

from __future__ import annotations

import argparse

import torch
import transformers

from aurora_opt.integrations import optimizer_cls_and_kwargs
from aurora_opt.integrations.hf import NeuronHealthCallback
from aurora_opt.train.data import stdlib_prefix


def byte_windows(tokens: torch.Tensor, length: int) -> list[dict[str, torch.Tensor]]:
    """Non-overlapping windows of byte tokens as causal-LM examples (the model shifts the labels)."""
    windows = tokens[: tokens.numel() // length * length].view(-1, length)
    return [{"input_ids": w, "labels": w.clone()} for w in windows]


def build_trainer(
    output_dir: str,
    *,
    steps: int,
    optimizer: str = "aurora",
    lr: float = 0.02,
    report_to: str = "none",
    logging_steps: int = 10,
    width: int = 64,
    layers: int = 2,
    seq_len: int = 64,
) -> transformers.Trainer:
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq_len,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    args = transformers.TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=8,
        logging_steps=logging_steps,
        report_to=report_to,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=byte_windows(stdlib_prefix(200_000), seq_len),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, optimizer, lr=lr, adamw_lr=3e-3),
    )
    trainer.add_callback(NeuronHealthCallback(trainer))
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="aurora")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--report-to", default="none", help="none, tensorboard, wandb, ...")
    parser.add_argument("--output-dir", default="runs/hf_llama")
    args = parser.parse_args()
    trainer = build_trainer(
        args.output_dir, steps=args.steps, optimizer=args.optimizer, lr=args.lr, report_to=args.report_to
    )
    trainer.train()
    for entry in trainer.state.log_history:
        if "neuron_health/starved_fraction" in entry:
            print(
                f"step {entry['step']:5d}  starved {entry['neuron_health/starved_fraction']:.3f}  "
                f"inactive {entry['neuron_health/inactive_fraction']:.3f}  "
                f"tracking {entry.get('neuron_health/ms_per_step', float('nan')):.2f} ms/step"
            )


if __name__ == "__main__":
    main()
