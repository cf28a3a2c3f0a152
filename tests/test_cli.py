"""The aurora-opt command line: a few-step compare and sweep on a tiny model, and bad input."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora_opt.cli import DEFAULT_LRS, build_parser, main
from aurora_opt.train.gpt import GPT
from aurora_opt.train.report import difference, gain_trend, time_sentence
from aurora_opt.train.trainer import TrainConfig, build_optimizers, settings_dict

TINY = [
    "--steps",
    "4",
    "--d-model",
    "16",
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--log-every",
    "2",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(300)))
    return path


def check_results_shape(results: dict, optimizers: list[str], steps: int) -> None:
    """results.json as documented: provenance, config, runs[optimizer, mlp_expansion, lr, seed, history, final]."""
    assert isinstance(results["config"], dict)
    assert {"commit", "dirty", "version", "command", "torch", "device", "threads", "machine", "utc"} <= set(
        results["provenance"]
    )
    assert results["provenance"]["command"].startswith("aurora-opt ")
    assert [run["optimizer"] for run in results["runs"]] == optimizers
    for run in results["runs"]:
        assert isinstance(run["optimizer"], str) and isinstance(run["mlp_expansion"], int)
        assert isinstance(run["lr"], float) and isinstance(run["seed"], int)
        assert [h["step"] for h in run["history"]][-1] == steps
        for record in run["history"]:
            assert set(record) == {"step", "train_loss", "val_loss", "starved_fraction", "act_dead_fraction"}
            assert isinstance(record["step"], int) and isinstance(record["train_loss"], float)
            assert record["val_loss"] is None or isinstance(record["val_loss"], float)
            assert 0.0 <= record["starved_fraction"] <= 1.0 and 0.0 <= record["act_dead_fraction"] <= 1.0
        assert set(run["final"]) == {"val_loss", "starved_fraction", "act_dead_fraction", "sec_per_step"}
        assert all(isinstance(v, float) for v in run["final"].values())


def test_compare_writes_results_plots_and_report(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--data", str(text_file), "--out", str(out), *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    check_results_shape(results, ["muon", "normuon", "unormuon", "aurora"], steps=4)
    assert results["provenance"]["command"] == shlex.join(
        ["aurora-opt", "compare", "--data", str(text_file), "--out", str(out), *TINY]
    )
    assert [run["lr"] for run in results["runs"]] == [DEFAULT_LRS[n] for n in ("muon", "normuon", "unormuon", "aurora")]
    for plot in ("loss.png", "starved.png", "leverage.png", "starved_heatmap.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    report = (out / "report.md").read_text()
    assert "| aurora |" in report and "What this run shows" in report

    # a second call with --resume reuses the finished runs
    assert main(["compare", "--data", str(text_file), "--out", str(out), "--resume", *TINY]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["history"] for r in again["runs"]] == [r["history"] for r in results["runs"]]


def test_optimizer_options_reach_the_optimizer_and_the_results(tmp_path, text_file, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--optimizers", "muon,aurora", "--data", str(text_file), "--out", str(out), *TINY]
    options = ["--option", "aurora.balance_steps=1", "--option", "aurora.row_correction=False"]
    assert main([*argv, *options]) == 0
    results = json.loads((out / "results.json").read_text())
    check_results_shape(results, ["muon", "aurora"], steps=4)
    assert results["config"]["options"] == {"aurora": {"balance_steps": 1, "row_correction": False}}
    assert "Optimizer options: aurora balance_steps=1, row_correction=False." in (out / "report.md").read_text()
    # a --resume must give the same options
    assert main([*argv, "--resume"]) == 2
    assert "options" in capsys.readouterr().err
    # the trainer builds the optimizer with them
    config = TrainConfig(optimizer="aurora", d_model=16, n_layer=1, n_head=2, options=results["config"]["options"])
    (optimizer,) = build_optimizers(config, GPT(config.model_config()))
    spectral = [g for g in optimizer.param_groups if g["algorithm"] != "adamw"]
    assert spectral and all(g["balance_steps"] == 1 and g["row_correction"] is False for g in spectral)
    # without options, settings and checkpoint keys are written as before options existed
    assert "options" not in settings_dict(TrainConfig()) and settings_dict(config)["options"] == config.options


def test_dtype_options_take_dtype_names():
    """``*_dtype`` options are given by name (JSON in settings and results) and reach the optimizer
    as dtypes: the arithmetic CUDA's default runs, chosen on the CPU."""
    options = {"aurora": {"polar_dtype": "bfloat16", "gram_matmul_dtype": "torch.float32"}}
    config = TrainConfig(optimizer="aurora", d_model=16, n_layer=1, n_head=2, options=options)
    (optimizer,) = build_optimizers(config, GPT(config.model_config()))
    spectral = [g for g in optimizer.param_groups if g["algorithm"] != "adamw"]
    assert spectral and all(g["polar_dtype"] is torch.bfloat16 for g in spectral)
    assert all(g["gram_matmul_dtype"] is torch.float32 for g in spectral)
    assert json.loads(json.dumps(settings_dict(config)))["options"] == options


def test_matched_lr_and_torch_optimizers(tmp_path, text_file):
    out = tmp_path / "out"
    argv = ["compare", "--optimizers", "adamw,torch_muon", "--lr", "0.01", "--data", str(text_file), "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    check_results_shape(results, ["adamw", "torch_muon"], steps=4)
    assert [r["lr"] for r in results["runs"]] == [0.01, 0.01]


def test_sweep_writes_summary_and_gain_plot(tmp_path, text_file):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--optimizers",
        "muon,aurora",
        "--expansions",
        "2,4",
        "--lrs",
        "0.02",
        "--seeds",
        "0",
        "--data",
        str(text_file),
        "--out",
        str(out),
    ]
    assert main([*argv, *TINY, "--steps", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4
    assert {(r["mlp_expansion"], r["optimizer"]) for r in results["runs"]} == {
        (2, "muon"),
        (2, "aurora"),
        (4, "muon"),
        (4, "aurora"),
    }
    for plot in ("sweep_lr.png", "sweep_gain.png"):
        assert (out / plot).exists()
    report = (out / "report.md").read_text()
    assert "best" in report

    # report regenerates report.md from results.json alone, and fills README tables from it
    (out / "report.md").unlink()
    assert main(["report", str(out), "--no-plots"]) == 0
    assert (out / "report.md").read_text() == report
    readme = tmp_path / "README.md"
    stale = "intro\n<!-- results-table: sweep -->\n| stale |\n<!-- /results-table -->\nend\n"
    readme.write_text(stale)
    assert main(["report", "--readme", str(readme), "--check"]) == 1
    assert readme.read_text() == stale
    assert main(["report", "--readme", str(readme)]) == 0
    filled = readme.read_text()
    assert filled.startswith("intro\n<!-- results-table: sweep -->\n| expansion | optimizer | best lr |")
    assert filled.endswith("<!-- /results-table -->\nend\n") and filled.count("| 2 | Aurora | 0.02 | 1 |") == 1
    assert main(["report", "--readme", str(readme), "--check"]) == 0


def _bad_shard(directory: Path) -> Path:
    path = directory / "bad.bin"
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (1234, 1, 4)
    path.write_bytes(header.tobytes() + np.arange(4, dtype=np.uint16).tobytes())
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--data", "/no/such/path"], "data path not found"),
        (["compare", "--optimizers", "sgd"], "unknown optimizer 'sgd'"),
        (["compare", "--lr", "fast"], "--lr"),
        (["compare", "--d-model", "30", "--n-head", "4"], "multiple of n_head"),
        (["compare", "--option", "aurora.balance_steps"], "expected OPTIMIZER.NAME=VALUE"),
        (["compare", "--option", "aurora.balance_steps=one"], "not a Python literal"),
        (["compare", "--option", "aurora.nonsense=1"], "invalid options for aurora"),
        (["compare", "--option", "aurora.balance_steps=0"], "invalid options for aurora"),
        (["compare", "--option", "aurora.balance_steps=[1]"], "expected a number, bool, None or string"),
        (["compare", "--option", "aurora.polar_dtype='bf16'"], "expected one of float32, float64, bfloat16"),
        (["compare", "--optimizers", "muon", "--option", "aurora.balance_steps=1"], "not among --optimizers"),
        (["compare", "--optimizers", "adamw", "--option", "adamw.eps=1e-8"], "not an aurora-opt optimizer"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("aurora-opt: error:")


def test_bad_shard_header_from_a_fresh_process(tmp_path):
    shard = _bad_shard(tmp_path)
    src = Path(__file__).resolve().parents[1] / "src"
    proc = subprocess.run(
        [sys.executable, "-m", "aurora_opt", "compare", "--data", str(shard), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "", "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"aurora-opt: error: {shard}: bad shard magic 1234 (expected 20240520)"
    assert "Traceback" not in proc.stderr


def test_parser_lists_the_subcommands():
    parser = build_parser()
    assert parser.parse_args(["compare"]).command == "compare"
    assert parser.parse_args(["sweep", "--expansions", "2,8"]).expansions == [2, 8]


def test_sweep_resume_skips_finished_runs_and_refuses_changed_settings(tmp_path, text_file, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--optimizers",
        "muon,aurora",
        "--expansions",
        "4",
        "--lrs",
        "0.02",
        "--lrs",
        "aurora=0.05",
        "--seeds",
        "0",
        "--data",
        str(text_file),
        "--out",
        str(out),
        *TINY,
        "--steps",
        "2",
    ]
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    assert [(r["optimizer"], r["lr"]) for r in first["runs"]] == [("muon", 0.02), ("aurora", 0.05)]
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}

    capsys.readouterr()
    assert main([*argv, "--steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aurora-opt: error: --resume: the settings differ") and "steps 2 → 3" in err

    # a third seed: the finished runs are read back, only the new ones train
    assert main([*argv, "--seeds", "0,2", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [(r["optimizer"], r["seed"]) for r in again["runs"]] == [
        ("muon", 0),
        ("muon", 2),
        ("aurora", 0),
        ("aurora", 2),
    ]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir() if p.name in finished} == finished
    assert again["runs"][0]["history"] == first["runs"][0]["history"]


def test_time_sentence_counts_runs_loaded_by_a_resume():
    runs = [{"final": {"sec_per_step": 0.5}}, {"final": {"sec_per_step": 0.25}}]
    results = {"wall_seconds": 60.0, "config": {"steps": 100}, "runs": runs}
    assert time_sentence(results) == "Wall time 60 s."  # 75 s trained ≤ 1.5 × 60 s: trained in this invocation
    results["wall_seconds"] = 2.0
    sentence = time_sentence(results)
    assert "loaded runs finished earlier" in sentence and "trained for 75 s in all" in sentence


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    assert main(["compare", "--out", str(target), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"aurora-opt: error: --out {target}: exists and is not a directory"
    assert target.read_text() == "keep me\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "--device", "cuda", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == "aurora-opt: error: --device cuda: torch sees no CUDA device"


def _cell(mean: float, sem: float | None, expansion: int = 4, optimizer: str = "muon") -> dict:
    return {
        "mlp_expansion": expansion,
        "optimizer": optimizer,
        "lr": 0.02,
        "seeds": 3,
        "val_loss_mean": mean,
        "val_loss_sem": sem,
    }


def test_differences_are_called_significant_only_beyond_two_standard_errors():
    # se = hypot(0.03, 0.04) = 0.05: a difference of 0.099 is within 2 SE, 0.101 beyond
    assert not difference(_cell(2.099, 0.03), _cell(2.0, 0.04))["significant"]
    assert difference(_cell(2.101, 0.03), _cell(2.0, 0.04))["significant"]
    assert difference(_cell(2.5, None), _cell(2.0, 0.04)) == {"value": 0.5, "se": None, "significant": False}
    # the case: gains +0.012 and +0.017 with a seed spread near 0.07 are no trend
    noisy = [(2, {"value": 0.012, "se": 0.04}), (4, {"value": 0.017, "se": 0.04})]
    assert "no dependence of the gain" in gain_trend(noisy)
    clear = [(2, {"value": 0.01, "se": 0.002}), (4, {"value": 0.03, "se": 0.002}), (8, {"value": 0.06, "se": 0.002})]
    assert gain_trend(clear).startswith("The gain grows")
    mixed = [(2, {"value": 0.01, "se": 0.002}), (4, {"value": 0.03, "se": 0.002}), (8, {"value": 0.031, "se": 0.002})]
    assert gain_trend(mixed).startswith("The gain grows beyond 2 standard errors over seeds from 2 → 4")
    assert "4 → 8 (+0.0010) is within 2 standard errors" in gain_trend(mixed)
    up_down = [(2, {"value": 0.01, "se": 0.002}), (4, {"value": 0.03, "se": 0.002}), (8, {"value": 0.0, "se": 0.002})]
    assert gain_trend(up_down).startswith("The gain does not change monotonically")


def test_readme_tables_match_the_committed_results():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert "<!-- results-table: " in readme.read_text()
    assert main(["report", "--readme", str(readme), "--check"]) == 0, "run: aurora-opt report --readme README.md"


def test_differences_over_the_same_seeds_are_paired():
    """Seeds share initialization and batches: a consistent per-seed difference is significant even
    when the spread between seeds is large (the unpaired standard error would hide it)."""
    a = {**_cell(2.0, 0.05), "val_loss_by_seed": {"0": 1.95, "1": 2.0, "2": 2.05}}
    b = {**_cell(2.03, 0.05), "val_loss_by_seed": {"0": 1.98, "1": 2.03, "2": 2.08}}
    d = difference(a, b)
    assert d["paired"] and d["se"] < 1e-12 and d["significant"]  # every seed: −0.03 up to rounding
    assert not difference(_cell(2.0, 0.05), _cell(2.03, 0.05))["significant"]  # unpaired: 0.03 < 2·0.0707
    c = {**b, "val_loss_by_seed": {"0": 1.9, "1": 2.03, "2": 2.16}}  # per seed +0.05, −0.03, −0.11
    assert not difference(a, c)["significant"]
