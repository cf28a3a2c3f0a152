"""``aurora-opt``: train a small GPT with each optimizer and measure whether MLP neurons starve.

Subcommands are listed in ``SUBCOMMANDS`` as name → (help, add_arguments, run); ``run(args)``
returns the exit code. Training commands share ``add_training_arguments``.
Exit codes: 0 done, 2 bad input (one-line message), 130/143 stopped by SIGINT/SIGTERM after
saving a checkpoint (continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import ast
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import bench
from .provenance import provenance
from .train.checkpoint import CheckpointError
from .train.data import Corpus, load_corpus
from .train.report import (
    MissingExtraError,
    compare_report,
    fill_tables,
    load_average,
    plot_compare,
    plot_sweep,
    regenerate,
    require,
    sweep_report,
    sweep_summary,
    write_json,
)
from .train.trainer import RunResult, StopRequest, TrainConfig, optimizer_names, settings_dict, train

DEFAULT_OPTIMIZERS = ("muon", "normuon", "unormuon", "aurora")
#: lr of each optimizer in ``compare`` unless ``--lr`` says otherwise: the library defaults, each the
#: best of the CPU lr sweep in docs/results/lr-sweep-4opt-cpu (default model, 300 steps, lr 0.01–0.08,
#: 3 seeds); AdamW's is tuned for the small model
DEFAULT_LRS: dict[str, float] = {
    "muon": 0.02,
    "normuon": 0.02,
    "unormuon": 0.02,
    "aurora": 0.02,
    "riemannian_aurora": 0.02,
    "adamw": 3e-3,
    "torch_muon": 0.02,
}
#: TrainConfig's defaults, which are also the command line's
TRAIN_DEFAULTS = TrainConfig()
#: fields of TrainConfig that vary within one command (the grid), not settings of the command
GRID_FIELDS = ("optimizer", "lr", "seed", "mlp_expansion", "leverage_steps")
#: settings that may change between an interrupted command and its ``--resume``
BOOKKEEPING_FIELDS = ("checkpoint_every",)


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
    d = TRAIN_DEFAULTS
    g = parser.add_argument_group("model and data")
    g.add_argument(
        "--data",
        type=Path,
        default=None,
        help="text file, directory of text files, or .bin token shard(s); default: Python's stdlib source",
    )
    g.add_argument(
        "--mlp-expansion",
        type=int,
        default=d.mlp_expansion,
        help=f"MLP hidden width / d_model (default {d.mlp_expansion})",
    )
    g.add_argument("--mlp", choices=("swiglu", "gelu"), default=d.mlp)
    g.add_argument("--n-layer", type=int, default=d.n_layer)
    g.add_argument("--n-head", type=int, default=d.n_head)
    g.add_argument("--d-model", type=int, default=d.d_model)
    g.add_argument("--seq-len", type=int, default=d.seq_len)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})")
    g.add_argument("--weight-decay", type=float, default=None, help="default: each optimizer's own default")
    g.add_argument(
        "--adamw-lr", type=float, default=d.adamw_lr, help="lr of embeddings, head and norms (all optimizers)"
    )
    g.add_argument("--device", default=d.device, help="cpu (fp32) or cuda (bf16 autocast)")
    g.add_argument(
        "--option",
        action="append",
        default=None,
        metavar="OPTIMIZER.NAME=VALUE",
        help="a constructor option of one optimizer, e.g. aurora.balance_steps=1 (the value a Python number, "
        "True, False, None or quoted string); repeatable",
    )
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between recorded diagnostics")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validation losses")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches)
    g.add_argument("--diag-every", type=int, default=d.diag_every, help="measure update shares every N steps")
    g = parser.add_argument_group("output and checkpoints")
    g.add_argument("--out", type=Path, default=None, help="output directory")
    g.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints (0: never)"
    )
    g.add_argument("--resume", action="store_true", help="continue from the checkpoints and finished runs in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_config(args: argparse.Namespace, **fields: Any) -> TrainConfig:
    base = dict(
        weight_decay=args.weight_decay,
        adamw_lr=args.adamw_lr,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        mlp_expansion=args.mlp_expansion,
        mlp=args.mlp,
        device=args.device,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        diag_every=args.diag_every,
        checkpoint_every=args.checkpoint_every,
        options=_parse_options(args.option),
    )
    base.update(fields)
    try:
        return TrainConfig(**base)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _parse_lrs(text: str | None, optimizers: list[str]) -> tuple[dict[str, float], str]:
    """``--lr``: one number for all (matched), or ``name=value,...``; default: ``DEFAULT_LRS``."""
    if text is None:
        return (
            {name: DEFAULT_LRS[name] for name in optimizers},
            "each optimizer at its default lr for this command (the best of each in the CPU lr sweep, "
            "docs/results/lr-sweep-4opt-cpu)",
        )
    if "=" not in text:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"--lr: expected a number or name=value pairs, got {text!r}") from None
        return {name: value for name in optimizers}, f"matched: every optimizer at lr {value:g}"
    lrs = {name: DEFAULT_LRS[name] for name in optimizers}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in optimizers:
            raise UsageError(f"--lr: {name.strip()!r} is not among --optimizers")
        try:
            lrs[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--lr: bad value in {item!r}") from None
    return lrs, "given on the command line: " + ", ".join(f"{n} {v:g}" for n, v in lrs.items())


#: lrs every optimizer is swept over unless ``--lrs`` says otherwise
DEFAULT_SWEEP_LRS = (0.01, 0.02, 0.05, 0.1)


def _parse_sweep_lrs(texts: list[str] | None, optimizers: list[str]) -> dict[str, list[float]]:
    """``--lrs`` (repeatable): ``a,b,c`` for every optimizer not named elsewhere, or ``name=a,b,c``."""
    shared: list[float] = list(DEFAULT_SWEEP_LRS)
    own: dict[str, list[float]] = {}
    for text in texts or []:
        name, sep, values = text.rpartition("=")
        name = name.strip()
        if sep and name not in optimizers:
            raise UsageError(f"--lrs: {name!r} is not among --optimizers")
        try:
            lrs = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"--lrs: expected comma-separated numbers, got {values!r}") from None
        if not lrs:
            raise UsageError(f"--lrs: no learning rates in {text!r}")
        if sep:
            own[name] = lrs
        else:
            shared = lrs
    return {name: own.get(name, shared) for name in optimizers}


def _parse_options(texts: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--option OPTIMIZER.NAME=VALUE`` (repeatable) → {optimizer: {name: value}}."""
    options: dict[str, dict[str, Any]] = {}
    for text in texts or []:
        target, sep, value_text = text.partition("=")
        optimizer, dot, name = target.strip().partition(".")
        if not (sep and dot and optimizer and name.isidentifier()):
            raise UsageError(f"--option: expected OPTIMIZER.NAME=VALUE, got {text!r}")
        try:
            value = ast.literal_eval(value_text.strip())
        except (ValueError, SyntaxError):
            raise UsageError(f"--option {text}: the value is not a Python literal (quote strings)") from None
        options.setdefault(optimizer, {})[name] = value
    return options


def _check_option_targets(options: dict[str, dict[str, Any]], optimizers: list[str]) -> None:
    for name in options:
        if name not in optimizers:
            raise UsageError(f"--option: {name!r} is not among --optimizers")


def _check_optimizers(names: list[str]) -> list[str]:
    for name in names:
        if name not in optimizer_names():
            raise UsageError(f"unknown optimizer {name!r}; choose from {', '.join(optimizer_names())}")
    if not names:
        raise UsageError("no optimizers given")
    return names


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"--device: {device!r} is not a torch device") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: torch sees no CUDA device")


def _output_dir(args: argparse.Namespace, default: str) -> Path:
    out = args.out or Path(default)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    return out


# ---------------------------------------------------------------------------------------------- running
class Runner:
    """Runs one training after another into ``out``: finished runs are kept as runs/<key>.json, and
    checkpoints under checkpoints/<key>/, so ``--resume`` skips finished runs and continues the rest."""

    def __init__(self, out: Path, args: argparse.Namespace, corpus: Corpus, stop: StopRequest) -> None:
        self.out = out
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
        bar = (
            self.tqdm(total=config.steps, desc=label, unit="step", leave=True, dynamic_ncols=True)
            if self.progress
            else None
        )

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
            result = train(
                config,
                self.corpus,
                checkpoint_dir=self.out / "checkpoints" / key,
                resume=self.resume,
                stop=self.stop,
                progress=progress,
                warn=lambda m: print(f"aurora-opt: warning: {m}", file=sys.stderr),
            )
        finally:
            if bar is not None:
                bar.close()
        if result.status == "interrupted":
            return None
        write_json(done, result.as_dict())
        return result


def _settings(args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    """What every run of a command shares and a ``--resume`` must match: the training settings
    except the grid axes and checkpoint interval, and the data."""
    settings = settings_dict(_run_config(args))
    for key in (*GRID_FIELDS, *BOOKKEEPING_FIELDS):
        settings.pop(key)
    settings["data"] = corpus.describe()
    return settings


def _check_settings(out: Path, command: str, settings: dict[str, Any], resume: bool) -> None:
    """Record the settings in ``out/settings.json``; with ``resume``, refuse if they changed."""
    path = out / "settings.json"
    current = {"command": command, **settings}
    if resume and path.exists():
        saved = json.loads(path.read_text())
        changed = [
            f"{key} {saved.get(key)!r} → {current.get(key)!r}"
            for key in sorted({*saved, *current})
            if saved.get(key) != current.get(key)
        ]
        if changed:
            raise UsageError(
                f"--resume: the settings differ from those in {path} ({'; '.join(changed)}); "
                "use the original settings or a new --out directory"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, current)


def _run_all(
    args: argparse.Namespace, command: str, default_out: str, grid: list[tuple[TrainConfig, str]]
) -> tuple[Path, Corpus, list[RunResult], float] | int:
    """The one run loop of ``compare`` and ``sweep``: train every (config, label) of ``grid`` in
    order into the output directory. Returns (out, corpus, results, wall seconds), or the exit code
    if a signal stopped it."""
    out = _output_dir(args, default_out)
    _check_device(args.device)
    corpus = _load_corpus(args)
    if not args.no_progress:
        require("tqdm")
    require("matplotlib")
    _check_settings(out, command, _settings(args, corpus), args.resume)
    stop = _install_stop()
    runner = Runner(out, args, corpus, stop)
    start = time.perf_counter()
    results = []
    for config, label in grid:
        result = runner.run(config, label)
        if result is None:
            return _interrupted(stop, out)
        results.append(result)
    return out, corpus, results, time.perf_counter() - start


def _interrupted(stop: StopRequest, out: Path) -> int:
    print(
        f"aurora-opt: stopped by signal {stop.signal}; checkpoint saved under {out / 'checkpoints'}. "
        f"Continue with the same command and --resume.",
        file=sys.stderr,
    )
    return 128 + int(stop.signal or 0)


def _load_corpus(args: argparse.Namespace) -> Corpus:
    corpus = load_corpus(args.data, min_tokens=args.seq_len + 2)
    if args.data is None and not args.no_progress:
        print(
            f"data: {corpus.source} ({corpus.train.numel():,} train / {corpus.val.numel():,} val bytes)",
            file=sys.stderr,
        )
    return corpus


def _results(
    args: argparse.Namespace, corpus: Corpus, runs: list[RunResult], wall_seconds: float, **config: Any
) -> dict[str, Any]:
    """results.json: provenance, the shared settings plus ``config``, and every run's history."""
    settings = _settings(args, corpus)
    settings.update(num_params=runs[0].num_params, checkpoint_every=args.checkpoint_every, **config)
    return {
        "provenance": {**provenance(args.device, args.command_line), "load_average": load_average()},
        "config": settings,
        "wall_seconds": wall_seconds,
        "runs": [r.results_entry() for r in runs],
    }


def run_compare(args: argparse.Namespace) -> int:
    optimizers = _check_optimizers(args.optimizers)
    _check_option_targets(_parse_options(args.option), optimizers)
    lrs, lr_source = _parse_lrs(args.lr, optimizers)
    leverage_steps = args.leverage_steps or sorted({max(1, args.steps // 10), max(1, args.steps // 2), args.steps})
    grid = [
        (
            _run_config(args, optimizer=name, lr=lrs[name], seed=args.seed, leverage_steps=tuple(leverage_steps)),
            f"[{index + 1}/{len(optimizers)}] {name} lr {lrs[name]:g}",
        )
        for index, name in enumerate(optimizers)
    ]
    done = _run_all(args, "compare", "aurora-compare", grid)
    if isinstance(done, int):
        return done
    out, corpus, runs, wall_seconds = done
    results = _results(
        args,
        corpus,
        runs,
        wall_seconds,
        mlp_expansion=args.mlp_expansion,
        optimizers=optimizers,
        seed=args.seed,
        lrs=lrs,
        lr_source=lr_source,
        leverage_steps=leverage_steps,
    )
    diagnostics = {
        "runs": [
            {
                "optimizer": r.optimizer,
                "layers": r.layers,
                "leverage": r.leverage,
                "diagnostic_seconds": r.diagnostic_seconds,
                "train_seconds": r.train_seconds,
            }
            for r in runs
        ]
    }
    write_json(out / "results.json", results)
    write_json(out / "diagnostics.json", diagnostics)
    plots = plot_compare(out, results["runs"], diagnostics)
    report = compare_report(results)
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out / 'results.json'}, {', '.join(p.name for p in plots)}, report.md", file=sys.stderr)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    optimizers = _check_optimizers(args.optimizers)
    _check_option_targets(_parse_options(args.option), optimizers)
    lrs = _parse_sweep_lrs(args.lrs, optimizers)
    cells = [
        (e, name, lr, seed) for e in args.expansions for name in optimizers for lr in lrs[name] for seed in args.seeds
    ]
    grid = [
        (
            _run_config(args, optimizer=name, lr=lr, seed=seed, mlp_expansion=e),
            f"[{index + 1}/{len(cells)}] e{e} {name} lr {lr:g} seed {seed}",
        )
        for index, (e, name, lr, seed) in enumerate(cells)
    ]
    done = _run_all(args, "sweep", "aurora-sweep", grid)
    if isinstance(done, int):
        return done
    out, corpus, runs, wall_seconds = done
    results = _results(
        args, corpus, runs, wall_seconds, optimizers=optimizers, expansions=args.expansions, lrs=lrs, seeds=args.seeds
    )
    summary = sweep_summary(results["runs"])
    write_json(out / "results.json", results)
    write_json(out / "summary.json", summary)
    plots = plot_sweep(out, summary)
    report = sweep_report(results, summary)
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out / 'results.json'}, summary.json, {', '.join(p.name for p in plots)}, report.md", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    for directory in args.dirs:
        if not (directory / "results.json").is_file():
            raise UsageError(f"{directory}: no results.json")
    if not args.check:
        if args.dirs and not args.no_plots:
            require("matplotlib")
        for directory in args.dirs:
            written = regenerate(directory, plots=not args.no_plots)
            print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.readme is None:
        return 0
    try:
        text = args.readme.read_text()
    except OSError as err:
        raise UsageError(f"--readme {args.readme}: {err.strerror}") from None
    try:
        filled = fill_tables(text, args.readme.parent)
    except OSError as err:
        raise UsageError(
            f"--readme {args.readme}: a results-table names a directory without results.json ({err.filename})"
        ) from None
    if filled == text:
        print(f"{args.readme}: tables up to date", file=sys.stderr)
        return 0
    if args.check:
        print(
            f"aurora-opt: {args.readme}: tables differ from the results they name; "
            f"run aurora-opt report --readme {args.readme}",
            file=sys.stderr,
        )
        return 1
    args.readme.write_text(filled)
    print(f"wrote the tables of {args.readme}", file=sys.stderr)
    return 0


def _install_stop() -> StopRequest:
    stop = StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stop


# ---------------------------------------------------------------------------------------------- parser
def _add_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optimizers",
        type=_csv(str),
        default=list(DEFAULT_OPTIMIZERS),
        help=f"comma-separated (default {','.join(DEFAULT_OPTIMIZERS)}); any of {', '.join(optimizer_names())}",
    )
    parser.add_argument(
        "--lr", default=None, help="one lr for all (matched), or name=value,...; default: each optimizer's tuned lr"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--leverage-steps",
        type=_csv(int),
        default=None,
        help="steps at which to record leverage histograms (default: 10%%, 50%%, 100%% of --steps)",
    )
    add_training_arguments(parser, steps=300)


def _add_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optimizers",
        type=_csv(str),
        default=["muon", "aurora"],
        help=f"comma-separated (default muon,aurora); any of {', '.join(optimizer_names())}",
    )
    parser.add_argument("--expansions", type=_csv(int), default=[2, 4, 8], help="MLP expansion factors (default 2,4,8)")
    parser.add_argument(
        "--lrs",
        action="append",
        default=None,
        metavar="[NAME=]LR,LR,...",
        help="learning rates tried: a list for every optimizer, or NAME=list for one; repeatable "
        f"(default {','.join(f'{lr:g}' for lr in DEFAULT_SWEEP_LRS)} for each)",
    )
    parser.add_argument("--seeds", type=_csv(int), default=[0, 1])
    add_training_arguments(parser, steps=300)


def _add_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", type=Path, nargs="*", help="compare or sweep output directories (with results.json)")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="fill the tables between <!-- results-table: DIR --> and <!-- /results-table --> "
        "(DIR relative to the file) from DIR/results.json",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a --readme table differs from its results"
    )
    parser.add_argument("--no-plots", action="store_true", help="report.md and summary.json only")


SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "compare": (
        "train the same model with each optimizer; write results.json, plots, report.md",
        _add_compare,
        run_compare,
    ),
    "sweep": (
        "MLP expansion × lr × seed grid: each optimizer at its best lr, and Aurora's gain vs expansion",
        _add_sweep,
        run_sweep,
    ),
    "report": (
        "regenerate report.md, summary.json and plots from results.json, and README tables from them",
        _add_report,
        run_report,
    ),
    "bench": (
        "time the optimizer step of Muon and the Auroras per matrix shape and for a small GPT, with accuracy",
        bench.add_arguments,
        bench.run,
    ),
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
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv, argparse.Namespace(command_line=["aurora-opt", *argv]))
    try:
        return args.run(args)
    except (ValueError, CheckpointError, MissingExtraError) as err:
        # ValueError covers UsageError, DataError and settings that the model or an optimizer rejects
        print(f"aurora-opt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
