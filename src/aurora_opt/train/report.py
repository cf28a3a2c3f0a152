"""results.json, plots and report.md for ``aurora-opt compare`` and ``aurora-opt sweep``."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..diagnostics import STARVED_SHARE
from ..provenance import commit_label


class MissingExtraError(RuntimeError):
    """An optional dependency of the CLI (matplotlib, tqdm) is not installed."""


def require(module: str) -> Any:
    """Import an optional CLI dependency, or raise a one-line error saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise MissingExtraError(f"{module} is needed for this command: pip install 'aurora-opt[cli]'") from None


def load_average() -> float | None:
    """The 1-minute load average now: how busy the machine was (``None`` where unknown)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_sentence(results: dict[str, Any]) -> str:
    """One sentence on the code, command and machine behind ``results`` (its ``provenance`` record;
    results written before provenance was recorded carry only ``machine``)."""
    if "provenance" not in results:
        m = results["machine"]
        return (
            f"Machine: {m['processor']}, {m['cpu_count']} CPU cores, device {m['device']}"
            f"{', ' + m['gpu'] if 'gpu' in m else ''}, torch {m['torch']}, 1-min load average at start "
            f"{m.get('load_average', '?')}; commit not recorded."
        )
    p = results["provenance"]
    return (
        f"Machine: {p['machine']['cpu']}, {p['machine']['cpu_count']} CPU cores, {p['threads']} torch "
        f"thread(s), device {p['device']}, torch {p['torch']}, Python {p['python']}, 1-min load average at "
        f"start {p.get('load_average', '?')}. Code: aurora-opt {p['version']}, commit {commit_label(p)}; "
        f"command `{p['command']}`; run {p['utc']}."
    )


def time_sentence(results: dict[str, Any]) -> str:
    """The wall time of the invocation that wrote ``results``, and, where it loaded runs finished by
    earlier invocations (``--resume``), the time those runs trained: Σ s/step × steps over the runs."""
    wall = results["wall_seconds"]
    trained = sum(run["final"].get("sec_per_step", 0.0) for run in results["runs"]) * results["config"]["steps"]
    if trained <= 1.5 * wall:
        return f"Wall time {wall:.0f} s."
    return (
        f"Wall time {wall:.0f} s for the invocation that wrote these results, which loaded runs finished "
        f"earlier; the runs trained for {trained:.0f} s in all (s/step × steps, summed over runs)."
    )


def options_sentence(config: dict[str, Any]) -> str:
    """The optimizers' extra constructor options (``--option``), or "" where there were none."""
    options = config.get("options") or {}
    if not options:
        return ""
    listed = "; ".join(
        f"{name} " + ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) for name, kwargs in options.items()
    )
    return f"Optimizer options: {listed}."


def write_json(path: Path, data: Any) -> None:
    """Write atomically (temporary file, then rename)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------- compare
#: one marker per optimizer, so that curves that overlap can still be told apart
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_compare(out: Path, runs: list[dict[str, Any]], diagnostics: dict[str, Any]) -> list[Path]:
    """loss.png, starved.png, leverage.png, starved_heatmap.png; returns the paths written."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    muon = next((run for run in runs if run["optimizer"] == "muon"), None)
    if muon is not None:
        fig, (ax, ax_diff) = plt.subplots(1, 2, figsize=(12, 4.5))
        muon_val = {h["step"]: h["val_loss"] for h in muon["history"] if h["val_loss"] is not None}
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax_diff = None
    for k, run in enumerate(runs):
        steps = [h["step"] for h in run["history"]]
        style = dict(color=f"C{k}", marker=_MARKERS[k % len(_MARKERS)])
        ax.plot(steps, [h["train_loss"] for h in run["history"]], lw=1.2, color=style["color"], label=run["optimizer"])
        val = [(h["step"], h["val_loss"]) for h in run["history"] if h["val_loss"] is not None]
        if val:
            ax.plot(*zip(*val), "--", markersize=6, **style)
        if ax_diff is not None and val and run is not muon:
            pairs = [(step, loss - muon_val[step]) for step, loss in val if step in muon_val]
            if pairs:
                ax_diff.plot(*zip(*pairs), "-", label=run["optimizer"], **style)
    # the first tenth of the run (the drop from ln 256) would squeeze the rest of the curves together
    last_step = max((h["step"] for run in runs for h in run["history"]), default=0)
    tail = [h["train_loss"] for run in runs for h in run["history"] if h["step"] >= last_step / 10]
    if tail:
        ax.set_ylim(min(tail) - 0.05, max(tail) + 0.05)
    ax.set(
        xlabel="step",
        ylabel="loss (nats/byte)",
        title="training loss (solid), validation loss (dashed, markers)",
    )
    ax.legend(title="lr " + ", ".join(sorted({f"{run['lr']:g}" for run in runs})), fontsize=8)
    ax.grid(alpha=0.3)
    if ax_diff is not None:
        ax_diff.axhline(0, color="k", lw=0.8)
        ax_diff.set(
            xlabel="step", ylabel="validation loss − Muon's (nats/byte)", title="validation loss against Muon's"
        )
        ax_diff.legend(fontsize=8)
        ax_diff.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, out / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        steps = [h["step"] for h in run["history"]]
        (line,) = ax.plot(
            steps, [100 * h["starved_fraction"] for h in run["history"]], label=f"{run['optimizer']} starved"
        )
        ax.plot(
            steps,
            [100 * h["act_dead_fraction"] for h in run["history"]],
            ":",
            color=line.get_color(),
            label=f"{run['optimizer']} inactive",
        )
    ax.set(
        xlabel="step",
        ylabel="% of MLP hidden rows",
        title=f"starved rows (smoothed update share < {STARVED_SHARE}), solid; inactive units, dotted",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "starved.png"))

    lev_steps = sorted({int(s) for run in diagnostics["runs"] for s in run["leverage"]})
    if lev_steps:
        fig, axes = plt.subplots(
            len(runs), len(lev_steps), figsize=(3.2 * len(lev_steps), 2.2 * len(runs)), squeeze=False, sharex=True
        )
        for i, run in enumerate(diagnostics["runs"]):
            for j, step in enumerate(lev_steps):
                ax = axes[i][j]
                layers = run["leverage"].get(str(step), {})
                if layers:
                    edges = next(iter(layers.values()))["edges"]
                    counts = [sum(h["counts"][k] for h in layers.values()) for k in range(len(edges) - 1)]
                    ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge")
                ax.axvline(1.0, color="k", lw=0.8, ls="--")
                if i == 0:
                    ax.set_title(f"step {step}", fontsize=9)
                if j == 0:
                    ax.set_ylabel(run["optimizer"], fontsize=9)
                if i == len(runs) - 1:
                    ax.set_xlabel("leverage × m / n (1 = uniform)", fontsize=8)
        fig.suptitle(
            "row leverage of polar(M), M each optimizer's momentum, all gate/up/fc rows\n"
            "(Muon's update direction; NorMuon's and Aurora's updates rescale these rows)"
        )
        paths.append(_save(fig, out / "leverage.png"))

    grids = []
    for run in diagnostics["runs"]:
        layer_names = list(run["layers"][0]["starved"]) if run["layers"] else []
        grid = [[100 * rec["starved"].get(name, 0.0) for rec in run["layers"]] for name in layer_names]
        grids.append((run, layer_names, grid, [rec["step"] for rec in run["layers"]]))
    # the colour scale ends at the largest fraction seen (at least 5 %), so that 10–20 % is not black
    top = max([5.0] + [value for _, _, grid, _ in grids for row in grid for value in row])
    fig, axes = plt.subplots(
        1, len(runs), figsize=(3.2 * len(runs) + 1.5, 3.8), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, (run, layer_names, grid, steps) in zip(axes[0], grids):
        image = ax.imshow(
            grid or [[0.0]],
            aspect="auto",
            vmin=0,
            vmax=top,
            cmap="viridis",
            extent=(steps[0] if steps else 0, steps[-1] if steps else 1, len(layer_names) - 0.5, -0.5),
        )
        ax.set(title=run["optimizer"], xlabel="step")
    names = grids[0][1] if grids else []
    axes[0][0].set_yticks(
        range(len(names)), [n.replace("blocks.", "L").replace(".mlp.", " ") for n in names], fontsize=8
    )
    fig.colorbar(image, ax=axes[0].tolist(), label="% rows starved")
    fig.suptitle("starved fraction per layer")
    paths.append(_save(fig, out / "starved_heatmap.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def compare_report(results: dict[str, Any]) -> str:
    """report.md: the table and what it shows, in plain words, whatever it shows."""
    cfg, runs = results["config"], results["runs"]
    lines = [
        "# aurora-opt compare",
        "",
        f"Model: byte-level GPT, {cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['mlp']} MLP with expansion "
        f"{cfg['mlp_expansion']} ({cfg['num_params']:,} parameters); {cfg['steps']} steps of {cfg['batch_size']}×"
        f"{cfg['seq_len']} tokens; seed {cfg['seed']}; data: {cfg['data']['source']}.",
        " ".join(filter(None, (f"Learning rates: {cfg['lr_source']}.", options_sentence(cfg), time_sentence(results)))),
        machine_sentence(results),
        "",
        "| optimizer | lr | weight decay | final val loss | starved rows | inactive units | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        f = run["final"]
        lines.append(
            f"| {run['optimizer']} | {run['lr']:g} | {run['weight_decay']:g} | {_fmt(f['val_loss'])} | "
            f"{_pct(f['starved_fraction'])} | {_pct(f['act_dead_fraction'])} | {f['sec_per_step']:.3f} |"
        )
    lines += ["", "## What this run shows", ""]
    lines += [f"- {s}" for s in compare_findings(runs)]
    lines += [
        "",
        f"Starved: a gate/up/fc row whose update share ‖ΔW_i‖²/(‖ΔW‖²/m), smoothed by an EMA, is below "
        f"{STARVED_SHARE}. Inactive: a hidden unit whose mean |activation| is below 0.1 × its layer's median. "
        "One seed and one small model: differences of a few hundredths of a nat are within seed noise "
        "(see `aurora-opt sweep` for spread over seeds). s/step is wall time on a shared machine.",
    ]
    return "\n".join(lines) + "\n"


def compare_findings(runs: list[dict[str, Any]]) -> list[str]:
    """Plain statements computed from the runs."""
    findings = []
    finals = {r["optimizer"]: r["final"] for r in runs}
    starved = {name: f["starved_fraction"] for name, f in finals.items()}
    peak = {r["optimizer"]: max(h["starved_fraction"] for h in r["history"]) for r in runs}
    if all(v == 0 for v in peak.values()):
        findings.append(
            "No optimizer starved any row at any logged step: the starvation Aurora targets did not "
            "appear at this size, learning rate and length."
        )
    else:
        for name in finals:
            findings.append(f"{name}: {_pct(starved[name])} of rows starved at the end (peak {_pct(peak[name])}).")
    dead = {name: f["act_dead_fraction"] for name, f in finals.items()}
    findings.append("Inactive hidden units at the end: " + ", ".join(f"{n} {_pct(v)}" for n, v in dead.items()) + ".")
    losses = {n: f["val_loss"] for n, f in finals.items() if f["val_loss"] is not None}
    if losses:
        ranked = sorted(losses, key=losses.get)
        best = ranked[0]
        findings.append(
            f"Lowest final validation loss: {best} ({losses[best]:.4f}); "
            + ", ".join(f"{n} +{losses[n] - losses[best]:.4f}" for n in ranked[1:])
            + "."
        )
        if "muon" in losses and "aurora" in losses:
            gap = losses["muon"] - losses["aurora"]
            verdict = "better" if gap > 0 else "worse" if gap < 0 else "equal"
            findings.append(
                f"Aurora vs Muon: Aurora's final validation loss is {abs(gap):.4f} nats/byte {verdict} "
                "(one seed: whether that exceeds seed noise cannot be judged from this run)."
            )
    return findings


# ---------------------------------------------------------------------------------------------- sweep
def sweep_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds of each (expansion, optimizer, lr): final val loss and starved fraction."""
    cells: dict[tuple[int, str, float], list[dict[str, Any]]] = defaultdict(list)
    seeds: dict[tuple[int, str, float], list[int]] = defaultdict(list)
    for run in runs:
        key = (run["mlp_expansion"], run["optimizer"], run["lr"])
        cells[key].append(run["final"])
        seeds[key].append(run.get("seed"))
    summary = []
    for (expansion, optimizer, lr), finals in sorted(cells.items()):
        losses = [f["val_loss"] for f in finals]
        by_seed = {str(s): loss for s, loss in zip(seeds[(expansion, optimizer, lr)], losses) if s is not None}
        starved = [f["starved_fraction"] for f in finals]
        summary.append(
            {
                "mlp_expansion": expansion,
                "optimizer": optimizer,
                "lr": lr,
                "seeds": len(finals),
                "val_loss_mean": statistics.fmean(losses),
                "val_loss_std": statistics.pstdev(losses),
                "val_loss_sem": statistics.stdev(losses) / math.sqrt(len(losses)) if len(losses) > 1 else None,
                "val_loss_by_seed": by_seed,
                "starved_mean": statistics.fmean(starved),
                "starved_max": max(starved),
                "act_dead_mean": statistics.fmean(f["act_dead_fraction"] for f in finals),
            }
        )
    return summary


#: a difference is called significant when it exceeds this many standard errors over seeds
SIGNIFICANCE_SE = 2.0


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b of two summary cells' mean final val loss, its standard error over seeds, and whether
    |a − b| > 2 standard errors.

    Runs with the same seed share their initialization and batches, so where both cells hold the same
    seeds (two or more) the standard error is that of the per-seed differences (``paired``); otherwise
    sqrt(sem_a² + sem_b²); ``None`` with a single seed.
    """
    value = a["val_loss_mean"] - b["val_loss_mean"]
    seeds_a, seeds_b = a.get("val_loss_by_seed") or {}, b.get("val_loss_by_seed") or {}
    if len(seeds_a) > 1 and seeds_a.keys() == seeds_b.keys() and len(seeds_a) == a["seeds"] == b["seeds"]:
        per_seed = [seeds_a[s] - seeds_b[s] for s in seeds_a]
        se = statistics.stdev(per_seed) / math.sqrt(len(per_seed))
        return {"value": value, "se": se, "significant": abs(value) > SIGNIFICANCE_SE * se, "paired": True}
    if a.get("val_loss_sem") is None or b.get("val_loss_sem") is None:
        return {"value": value, "se": None, "significant": False}
    se = math.hypot(a["val_loss_sem"], b["val_loss_sem"])
    return {"value": value, "se": se, "significant": abs(value) > SIGNIFICANCE_SE * se}


def difference_words(d: dict[str, Any]) -> str:
    if d["se"] is None:
        return f"{d['value']:+.4f} (one seed: significance cannot be judged)"
    verdict = "significant" if d["significant"] else "not significant"
    kind = "paired standard error over the same seeds" if d.get("paired") else "standard error over seeds"
    return f"{d['value']:+.4f} ± {d['se']:.4f} ({kind}): {verdict} at {SIGNIFICANCE_SE:g} SE"


def gain_trend(gains: list[tuple[int, dict[str, Any]]]) -> str:
    """A sentence on how a gain changes with the expansion factor, from tests of each consecutive
    change against its standard error sqrt(se₁² + se₂²)."""
    if len(gains) < 2:
        return "One expansion factor: no trend to judge."
    steps = []
    for (e1, g1), (e2, g2) in zip(gains, gains[1:]):
        if g1["se"] is None or g2["se"] is None:
            return "With one seed, no change of the gain with the expansion factor can be judged."
        change = g2["value"] - g1["value"]
        steps.append((e1, e2, change, abs(change) > SIGNIFICANCE_SE * math.hypot(g1["se"], g2["se"])))
    if all(sig and change > 0 for _, _, change, sig in steps):
        return "The gain grows with the expansion factor: every step up exceeds 2 standard errors over seeds."
    if all(sig and change < 0 for _, _, change, sig in steps):
        return "The gain shrinks with the expansion factor: every step down exceeds 2 standard errors over seeds."
    significant = [f"{e1} → {e2} ({change:+.4f})" for e1, e2, change, sig in steps if sig]
    within = [f"{e1} → {e2} ({change:+.4f})" for e1, e2, change, sig in steps if not sig]
    if not significant:
        return (
            "No change of the gain between expansion factors exceeds 2 standard errors over seeds: "
            "this grid shows no dependence of the gain on the expansion factor."
        )
    rises = any(sig and change > 0 for _, _, change, sig in steps)
    falls = any(sig and change < 0 for _, _, change, sig in steps)
    if rises and falls:
        return (
            "The gain does not change monotonically with the expansion factor; changes beyond 2 standard "
            "errors: " + ", ".join(significant) + "."
        )
    return (
        f"The gain {'grows' if rises else 'shrinks'} beyond 2 standard errors over seeds from "
        + ", ".join(significant)
        + ("; the change " + within[0] + " is" if len(within) == 1 else "; the changes " + ", ".join(within) + " are")
        + " within 2 standard errors."
    )


def best_lrs(summary: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """For each (expansion, optimizer), the cell with the lowest mean final validation loss."""
    best: dict[tuple[int, str], dict[str, Any]] = {}
    for cell in summary:
        key = (cell["mlp_expansion"], cell["optimizer"])
        if key not in best or cell["val_loss_mean"] < best[key]["val_loss_mean"]:
            best[key] = cell
    return best


def _dodged(xs: list[float], index: int, count: int, log: bool) -> list[float]:
    """x positions shifted apart so that the error bars of ``count`` series do not overlap."""
    offset = (index - (count - 1) / 2) * 0.035
    return [x * 10**offset if log else x + 4 * offset for x in xs]


def _lr_axis(ax: Any, lrs: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
    ax.minorticks_off()
    ax.set_xlim(min(lrs) / 10**0.2, max(lrs) * 10**0.2)


def plot_sweep(out: Path, summary: list[dict[str, Any]]) -> list[Path]:
    """``sweep_lr.png``: per expansion factor, final val loss (mean ± std over seeds), each optimizer's
    difference to Muon at the same lr (paired over seeds, ± 1 standard error) and the starved fraction,
    against lr. ``sweep_gain.png``: each optimizer − Muon at their best lrs against the expansion factor."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    expansions = sorted({c["mlp_expansion"] for c in summary})
    optimizers = list(dict.fromkeys(c["optimizer"] for c in summary))
    others = [name for name in optimizers if name != "muon"]
    paired_panel = "muon" in optimizers and bool(others)
    rows = 3 if paired_panel else 2
    fig, axes = plt.subplots(
        rows, len(expansions), figsize=(4.6 * len(expansions), 3.2 * rows), squeeze=False, sharex="col"
    )
    cell = {(c["mlp_expansion"], c["optimizer"], c["lr"]): c for c in summary}
    for j, expansion in enumerate(expansions):
        lrs = sorted({c["lr"] for c in summary if c["mlp_expansion"] == expansion})
        for k, name in enumerate(optimizers):
            cells = [c for c in summary if c["mlp_expansion"] == expansion and c["optimizer"] == name]
            xs = _dodged([c["lr"] for c in cells], k, len(optimizers), log=True)
            color = f"C{k}"
            axes[0][j].errorbar(
                xs,
                [c["val_loss_mean"] for c in cells],
                yerr=[c["val_loss_std"] for c in cells],
                marker="o",
                capsize=3,
                color=color,
                label=name,
            )
            axes[rows - 1][j].plot(xs, [100 * c["starved_mean"] for c in cells], marker="o", color=color, label=name)
            if paired_panel and name != "muon":
                pairs = [
                    (c["lr"], difference(c, cell[(expansion, "muon", c["lr"])]))
                    for c in cells
                    if (expansion, "muon", c["lr"]) in cell
                ]
                axes[1][j].errorbar(
                    _dodged([lr for lr, _ in pairs], k, len(optimizers), log=True),
                    [d["value"] for _, d in pairs],
                    yerr=[d["se"] or 0.0 for _, d in pairs],
                    marker="o",
                    capsize=3,
                    color=color,
                    label=name,
                )
        axes[0][j].set(title=f"MLP expansion {expansion}", ylabel="final val loss\n(mean ± std over seeds)")
        if paired_panel:
            axes[1][j].axhline(0, color="k", lw=0.8)
            axes[1][j].set(ylabel="minus Muon's at the same lr\n(paired over seeds, ± 1 SE)")
        axes[rows - 1][j].set(xlabel="lr", ylabel="% gate/up/fc rows starved\nat the end (mean)")
        for ax in axes[:, j]:
            _lr_axis(ax, lrs)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(optimizers), fontsize=9)
    fig.tight_layout(rect=(0, 0.035 * 3 / rows, 1, 1))
    paths = [_save(fig, out / "sweep_lr.png")]

    best = best_lrs(summary)
    if paired_panel:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, name in enumerate(optimizers):
            if name == "muon":
                continue
            xs, diffs = [], []
            for expansion in expansions:
                if (expansion, "muon") in best and (expansion, name) in best:
                    xs.append(expansion)
                    diffs.append(difference(best[(expansion, name)], best[(expansion, "muon")]))
            ax.errorbar(
                _dodged(xs, k, len(optimizers), log=False),
                [d["value"] for d in diffs],
                yerr=[d["se"] or 0.0 for d in diffs],
                marker="o",
                capsize=4,
                color=f"C{k}",
                label=name,
            )
        ax.axhline(0, color="k", lw=0.8)
        ax.set(
            xlabel="MLP expansion factor",
            ylabel="final val loss − Muon's (nats/byte)\nbelow 0: better than Muon",
            title="Each optimizer against Muon, both at their best lr\n(paired over seeds, ± 1 standard error)",
            xticks=expansions,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, out / "sweep_gain.png"))
    return paths


def sweep_report(results: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    cfg = results["config"]
    data = " ".join(filter(None, (f"data: {cfg['data']['source']}.", options_sentence(cfg))))
    lines = [
        "# aurora-opt sweep",
        "",
        f"Byte-level GPT, {cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['mlp']} MLP; {cfg['steps']} steps of "
        f"{cfg['batch_size']}×{cfg['seq_len']} tokens; seeds {cfg['seeds']}; weight decay "
        f"{'each optimizer' + chr(39) + 's default' if cfg['weight_decay'] is None else cfg['weight_decay']}; {data}",
        time_sentence(results),
        machine_sentence(results),
        "",
        "| expansion | optimizer | lr | seeds | final val loss (mean ± std) | starved (mean / max) | inactive (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    best = best_lrs(summary)
    for c in summary:
        mark = " **best**" if best[(c["mlp_expansion"], c["optimizer"])] is c else ""
        lines.append(
            f"| {c['mlp_expansion']} | {c['optimizer']} | {c['lr']:g}{mark} | {c['seeds']} | "
            f"{c['val_loss_mean']:.4f} ± {c['val_loss_std']:.4f} | {_pct(c['starved_mean'])} / "
            f"{_pct(c['starved_max'])} | {_pct(c['act_dead_mean'])} |"
        )
    lines += ["", "## Each optimizer at its best lr", ""]
    for (expansion, name), c in sorted(best.items()):
        lines.append(
            f"- expansion {expansion}, {name}: lr {c['lr']:g}, val loss {c['val_loss_mean']:.4f} ± "
            f"{c['val_loss_std']:.4f}, starved {_pct(c['starved_mean'])}"
        )
    expansions = sorted({c["mlp_expansion"] for c in summary})
    optimizers = list(dict.fromkeys(c["optimizer"] for c in summary))
    baseline = "muon" if "muon" in optimizers else optimizers[0]
    others = [name for name in optimizers if name != baseline]
    if others:
        lines += [
            "",
            f"## Against {baseline}, each at its best lr",
            "",
            f"Difference of mean final val loss (optimizer − {baseline}; negative = lower loss than "
            f"{baseline}) ± its standard error over seeds; called significant only beyond "
            f"{SIGNIFICANCE_SE:g} standard errors. Picking each best lr from the same seeds favours "
            "neither side but makes small differences look larger than they are.",
            "",
        ]
        for e in expansions:
            for name in others:
                if (e, name) in best and (e, baseline) in best:
                    d = difference(best[(e, name)], best[(e, baseline)])
                    lines.append(f"- expansion {e}, {name} − {baseline}: {difference_words(d)}")
    if len(expansions) > 1 and "muon" in optimizers and "aurora" in optimizers:
        gains = [
            (e, difference(best[(e, "muon")], best[(e, "aurora")]))
            for e in expansions
            if (e, "muon") in best and (e, "aurora") in best
        ]
        lines += [
            "",
            "Aurora's gain over Muon (Muon − Aurora best-lr mean val loss): "
            + ", ".join(f"expansion {e}: {g['value']:+.4f}" for e, g in gains)
            + ". "
            + gain_trend(gains),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- regenerate
#: how README tables name the optimizers
DISPLAY_NAMES = {
    "muon": "Muon",
    "normuon": "NorMuon",
    "unormuon": "U-NorMuon",
    "aurora": "Aurora",
    "riemannian_aurora": "Riemannian Aurora",
    "adamw": "AdamW",
    "torch_muon": "torch.optim.Muon",
}
#: a README block generated from a results directory: <!-- results-table: DIR --> ... <!-- /results-table -->
TABLE_BLOCK = re.compile(r"(<!-- results-table: (?P<dir>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results-table -->)", re.S)


def compare_table(results: dict[str, Any]) -> str:
    """The README table of a compare run: one row per optimizer."""
    lines = [
        "| optimizer | lr | weight decay | final val loss (nats/byte) | starved gate/up rows | inactive units |",
        "|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        f = run["final"]
        lines.append(
            f"| {DISPLAY_NAMES.get(run['optimizer'], run['optimizer'])} | {run['lr']:g} | "
            f"{run['weight_decay']:g} | {_fmt(f['val_loss'])} | {_pct(f['starved_fraction'])} | "
            f"{_pct(f['act_dead_fraction'])} |"
        )
    return "\n".join(lines) + "\n"


def sweep_table(summary: list[dict[str, Any]]) -> str:
    """The README table of a sweep: each optimizer at its best lr per expansion, mean ± std over seeds."""
    lines = [
        "| expansion | optimizer | best lr | seeds | final val loss (mean ± std) | starved rows (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for (expansion, name), c in sorted(best_lrs(summary).items()):
        lines.append(
            f"| {expansion} | {DISPLAY_NAMES.get(name, name)} | {c['lr']:g} | {c['seeds']} | "
            f"{c['val_loss_mean']:.4f} ± {c['val_loss_std']:.4f} | {_pct(c['starved_mean'])} |"
        )
    return "\n".join(lines) + "\n"


def readme_table(directory: Path) -> str:
    """The README table of a compare or sweep directory, from its results.json alone."""
    results = json.loads((directory / "results.json").read_text())
    if "expansions" in results["config"]:
        return sweep_table(sweep_summary(results["runs"]))
    return compare_table(results)


def regenerate(directory: Path, *, plots: bool = True) -> list[Path]:
    """Rewrite report.md, and summary.json and the plots, of a compare or sweep directory from its
    results.json (and diagnostics.json for a compare's plots); returns the files written."""
    results = json.loads((directory / "results.json").read_text())
    written = []
    if "expansions" in results["config"]:
        summary = sweep_summary(results["runs"])
        write_json(directory / "summary.json", summary)
        written.append(directory / "summary.json")
        if plots:
            written += plot_sweep(directory, summary)
        report = sweep_report(results, summary)
    else:
        if plots and (directory / "diagnostics.json").exists():
            written += plot_compare(
                directory, results["runs"], json.loads((directory / "diagnostics.json").read_text())
            )
        report = compare_report(results)
    (directory / "report.md").write_text(report)
    return [*written, directory / "report.md"]


def fill_tables(text: str, root: Path) -> str:
    """``text`` with every results-table block replaced by the table generated from its directory
    (relative to ``root``)."""
    return TABLE_BLOCK.sub(lambda m: m.group(1) + readme_table(root / m["dir"]) + m.group(4), text)
