"""``aurora-opt``: train a small GPT with each optimizer and measure whether MLP neurons starve.

Subcommands are listed in ``SUBCOMMANDS`` as name → (help, add_arguments, run); ``run(args)``
returns the exit code. Training commands share ``add_training_arguments``.
Exit codes: 0 done, 2 bad input (one-line message), 130/143 stopped by SIGINT/SIGTERM after
saving a checkpoint (continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import bench
from .train.checkpoint import CheckpointError
from .train.data import Corpus, DataError, load_corpus
from .train.report import (
    MissingExtraError,
    compare_report,
    machine_info,
    plot_compare,
    plot_sweep,
    require,
    sweep_report,
    sweep_summary,
    write_json,
)
from .train.trainer import RunResult, StopRequest, TrainConfig, optimizer_names, train

DEFAULT_OPTIMIZERS = ("muon", "normuon", "unormuon", "aurora")
#: lr of each optimizer in ``compare`` by default. muon and aurora: the best of the CPU lr sweep in
#: docs/results/lr-sweep-cpu (the default model, 300 steps, lr 0.01-0.1), also their library defaults;
#: the others were not swept and take their library default (0.02)
TUNED_LRS: dict[str, float] = {"muon": 0.02, "normuon": 0.02, "unormuon": 0.02, "aurora": 0.02,
                               "riemannian_aurora": 0.02, "adamw": 3e-3, "torch_muon": 0.02}


class UsageError(ValueError):
    """Bad command-line input: reported in one line with exit code 2."""


# ---------------------------------------------------------------------------------------------- arguments
def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def add_training_arguments(parser: argparse.ArgumentParser, *, steps: int) -> None:
    """Model, data, run length and checkpointing: shared by every training subcommand."""
    g = parser.add_argument_group("model and data")
    g.add_argument("--data", type=Path, default=None,
                   help="text file, directory of text files, or .bin token shard(s); default: Python's stdlib source")
    g.add_argument("--mlp-expansion", type=int, default=4, help="MLP hidden width / d_model (default 4)")
    g.add_argument("--mlp", choices=("swiglu", "gelu"), default="swiglu")
    g.add_argument("--n-layer", type=int, default=2)
    g.add_argument("--n-head", type=int, default=4)
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--seq-len", type=int, default=64)
    g.add_argument("--batch-size", type=int, default=16)
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})")
    g.add_argument("--weight-decay", type=float, default=None, help="default: each optimizer's own default")
    g.add_argument("--adamw-lr", type=float, default=3e-3, help="lr of embeddings, head and norms (all optimizers)")
    g.add_argument("--device", default="cpu", help="cpu (fp32) or cuda (bf16 autocast)")
    g.add_argument("--log-every", type=int, default=10, help="steps between recorded diagnostics")
    g.add_argument("--eval-every", type=int, default=100, help="steps between validation losses")
    g.add_argument("--eval-batches", type=int, default=4)
    g.add_argument("--diag-every", type=int, default=1, help="measure update shares every N steps")
    g = parser.add_argument_group("output and checkpoints")
    g.add_argument("--out", type=Path, default=None, help="output directory")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: never)")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoints and finished runs in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_config(args: argparse.Namespace, **fields: Any) -> TrainConfig:
    base = dict(
        weight_decay=args.weight_decay, adamw_lr=args.adamw_lr, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model,
        mlp_expansion=args.mlp_expansion, mlp=args.mlp, device=args.device, log_every=args.log_every,
        eval_every=args.eval_every, eval_batches=args.eval_batches, diag_every=args.diag_every,
        checkpoint_every=args.checkpoint_every,
    )
    base.update(fields)
    try:
        return TrainConfig(**base)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _parse_lrs(text: str | None, optimizers: list[str]) -> tuple[dict[str, float], str]:
    """``--lr``: one number for all (matched), or ``name=value,...``; default: the tuned table."""
    if text is None:
        return ({name: TUNED_LRS[name] for name in optimizers},
                "each optimizer at its default lr for this command (best of the CPU lr sweep for muon and "
                "aurora; Muon's lr for normuon and unormuon, not swept; docs/neuron-health.md)")
    if "=" not in text:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"--lr: expected a number or name=value pairs, got {text!r}") from None
        return {name: value for name in optimizers}, f"matched: every optimizer at lr {value:g}"
    lrs = {name: TUNED_LRS[name] for name in optimizers}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in optimizers:
            raise UsageError(f"--lr: {name.strip()!r} is not among --optimizers")
        try:
            lrs[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--lr: bad value in {item!r}") from None
    return lrs, "given on the command line: " + ", ".join(f"{n} {v:g}" for n, v in lrs.items())


def _check_optimizers(names: list[str]) -> list[str]:
    for name in names:
        if name not in optimizer_names():
            raise UsageError(f"unknown optimizer {name!r}; choose from {', '.join(optimizer_names())}")
    if not names:
        raise UsageError("no optimizers given")
    return names


# ---------------------------------------------------------------------------------------------- running
class Runner:
    """Runs one training after another into ``out``: finished runs are kept as runs/<key>.json, and
    checkpoints under checkpoints/<key>/, so ``--resume`` skips finished runs and continues the rest."""

    def __init__(self, args: argparse.Namespace, corpus: Corpus, stop: StopRequest) -> None:
        self.out: Path = args.out
        self.resume: bool = args.resume
        self.progress = not args.no_progress
        self.corpus = corpus
        self.stop = stop
        if self.progress:
            self.tqdm = require("tqdm").tqdm
        (self.out / "runs").mkdir(parents=True, exist_ok=True)

    def run(self, config: TrainConfig, label: str) -> RunResult | None:
        """Train (or load the finished result of) ``config``; ``None`` if stopped by a signal."""
        lr, _ = config.resolved_hparams()
        key = f"{config.optimizer}-e{config.mlp_expansion}-lr{lr:g}-s{config.seed}"
        done = self.out / "runs" / f"{key}.json"
        if self.resume and done.exists():
            return RunResult(**json.loads(done.read_text()))
        bar = self.tqdm(total=config.steps, desc=label, unit="step", leave=True, dynamic_ncols=True) \
            if self.progress else None

        def progress(step: int, record: dict[str, Any]) -> None:
            if bar is None:
                return
            bar.n = step
            shown = {"loss": f"{record['train_loss']:.3f}"}
            if "starved_fraction" in record:
                shown["starved"] = f"{100 * record['starved_fraction']:.1f}%"
            bar.set_postfix(shown, refresh=False)
            bar.refresh()

        try:
            result = train(config, self.corpus, checkpoint_dir=self.out / "checkpoints" / key, resume=self.resume,
                           stop=self.stop, progress=progress, warn=lambda m: print(f"aurora-opt: warning: {m}",
                                                                                   file=sys.stderr))
        finally:
            if bar is not None:
                bar.close()
        if result.status == "interrupted":
            return None
        write_json(done, result.as_dict())
        return result


def _interrupted(stop: StopRequest, out: Path) -> int:
    print(f"aurora-opt: stopped by signal {stop.signal}; checkpoint saved under {out / 'checkpoints'}. "
          f"Continue with the same command and --resume.", file=sys.stderr)
    return 128 + int(stop.signal or 0)


def _load_corpus(args: argparse.Namespace) -> Corpus:
    corpus = load_corpus(args.data, min_tokens=args.seq_len + 2)
    if args.data is None and not args.no_progress:
        print(f"data: {corpus.source} ({corpus.train.numel():,} train / {corpus.val.numel():,} val bytes)",
              file=sys.stderr)
    return corpus


def _common_config(args: argparse.Namespace, corpus: Corpus, num_params: int) -> dict[str, Any]:
    config = dataclasses.asdict(_run_config(args))
    for key in ("optimizer", "lr", "seed", "leverage_steps"):
        config.pop(key)
    config.update(data=corpus.describe(), num_params=num_params)
    return config


def _num_params(args: argparse.Namespace, corpus: Corpus) -> int:
    from .train.gpt import GPT

    return GPT(_run_config(args).model_config(corpus.vocab_size)).num_params()


def run_compare(args: argparse.Namespace) -> int:
    optimizers = _check_optimizers(args.optimizers)
    lrs, lr_source = _parse_lrs(args.lr, optimizers)
    args.out = args.out or Path("aurora-compare")
    leverage_steps = args.leverage_steps or sorted({max(1, args.steps // 10), max(1, args.steps // 2), args.steps})
    corpus = _load_corpus(args)
    if not args.no_progress:
        require("tqdm")
    require("matplotlib")
    stop = _install_stop()
    runner = Runner(args, corpus, stop)
    start = time.perf_counter()
    machine = machine_info(args.device)
    results_runs = []
    for index, name in enumerate(optimizers):
        config = _run_config(args, optimizer=name, lr=lrs[name], seed=args.seed, leverage_steps=tuple(leverage_steps))
        result = runner.run(config, f"[{index + 1}/{len(optimizers)}] {name} lr {lrs[name]:g}")
        if result is None:
            return _interrupted(stop, args.out)
        results_runs.append(result)
    config = _common_config(args, corpus, results_runs[0].num_params)
    config.update(optimizers=optimizers, seed=args.seed, lrs=lrs, lr_source=lr_source, leverage_steps=leverage_steps)
    results = {"config": config, "machine": machine, "wall_seconds": time.perf_counter() - start,
               "runs": [r.results_entry() for r in results_runs]}
    diagnostics = {"runs": [{"optimizer": r.optimizer, "layers": r.layers, "leverage": r.leverage,
                             "diagnostic_seconds": r.diagnostic_seconds, "train_seconds": r.train_seconds}
                            for r in results_runs]}
    write_json(args.out / "results.json", results)
    write_json(args.out / "diagnostics.json", diagnostics)
    plots = plot_compare(args.out, results["runs"], diagnostics)
    (args.out / "report.md").write_text(compare_report(results))
    print(compare_report(results))
    print(f"wrote {args.out / 'results.json'}, {', '.join(p.name for p in plots)}, report.md", file=sys.stderr)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    optimizers = _check_optimizers(args.optimizers)
    args.out = args.out or Path("aurora-sweep")
    corpus = _load_corpus(args)
    if not args.no_progress:
        require("tqdm")
    require("matplotlib")
    stop = _install_stop()
    runner = Runner(args, corpus, stop)
    start = time.perf_counter()
    machine = machine_info(args.device)
    grid = [(e, name, lr, seed) for e in args.expansions for name in optimizers for lr in args.lrs for seed in args.seeds]
    results_runs = []
    for index, (expansion, name, lr, seed) in enumerate(grid):
        args.mlp_expansion = expansion
        config = _run_config(args, optimizer=name, lr=lr, seed=seed)
        result = runner.run(config, f"[{index + 1}/{len(grid)}] e{expansion} {name} lr {lr:g} seed {seed}")
        if result is None:
            return _interrupted(stop, args.out)
        results_runs.append(result)
    config = _common_config(args, corpus, results_runs[0].num_params)
    config.pop("mlp_expansion")
    config.update(optimizers=optimizers, expansions=args.expansions, lrs=args.lrs, seeds=args.seeds)
    results = {"config": config, "machine": machine, "wall_seconds": time.perf_counter() - start,
               "runs": [r.results_entry() for r in results_runs]}
    summary = sweep_summary(results["runs"])
    write_json(args.out / "results.json", results)
    write_json(args.out / "summary.json", summary)
    plots = plot_sweep(args.out, summary)
    report = sweep_report(results, summary)
    (args.out / "report.md").write_text(report)
    print(report)
    print(f"wrote {args.out / 'results.json'}, summary.json, {', '.join(p.name for p in plots)}, report.md",
          file=sys.stderr)
    return 0


def _install_stop() -> StopRequest:
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stop


# ---------------------------------------------------------------------------------------------- parser
def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizers", type=_csv(str), default=list(DEFAULT_OPTIMIZERS),
                        help=f"comma-separated (default {','.join(DEFAULT_OPTIMIZERS)}); any of {', '.join(optimizer_names())}")
    parser.add_argument("--lr", default=None,
                        help="one lr for all (matched), or name=value,...; default: each optimizer's tuned lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leverage-steps", type=_csv(int), default=None,
                        help="steps at which to record leverage histograms (default: 10%%, 50%%, 100%% of --steps)")
    add_training_arguments(parser, steps=300)


def _add_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizers", type=_csv(str), default=["muon", "aurora"])
    parser.add_argument("--expansions", type=_csv(int), default=[2, 4, 8], help="MLP expansion factors (default 2,4,8)")
    parser.add_argument("--lrs", type=_csv(float), default=[0.01, 0.02, 0.05, 0.1],
                        help="learning rates tried for every optimizer (default 0.01,0.02,0.05,0.1)")
    parser.add_argument("--seeds", type=_csv(int), default=[0, 1])
    add_training_arguments(parser, steps=300)


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "compare": ("train the same model with each optimizer; write results.json, plots, report.md",
                _add_compare, run_compare),
    "sweep": ("MLP expansion × lr × seed grid: each optimizer at its best lr, and Aurora's gain vs expansion",
              _add_sweep, run_sweep),
    "bench": ("time the optimizer step of Muon and the Auroras per matrix shape and for a small GPT, with accuracy",
              bench.add_arguments, bench.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aurora-opt", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, DataError, CheckpointError, MissingExtraError) as err:
        print(f"aurora-opt: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # settings rejected by the model or an optimizer
        print(f"aurora-opt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
