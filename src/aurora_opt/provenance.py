"""Where a result came from: code (commit, dirty tree, version), command, software, device and machine.

Every result file the project writes carries ``provenance(device, argv)`` so a number can be traced
to the code and machine that produced it. No absolute local path is recorded: paths in the command
line under the home directory or the checkout are shortened, and corpora are named, not located.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: set to the commit measured when the code runs from a copy without ``.git``
COMMIT_ENV = "AURORA_OPT_COMMIT"
#: the repository root (src/aurora_opt/provenance.py → ../..), where ``git`` is asked
REPO_ROOT = Path(__file__).resolve().parents[2]
#: seconds ``git`` may take before the commit is recorded as unknown
GIT_TIMEOUT_S = 10


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(commit: str | None = None) -> dict[str, Any]:
    """``commit`` (40 hex digits or ``None``), ``dirty`` (tracked files changed; ``None`` if unknown)
    and ``commit_source``: the ``commit`` given ("given"), else ``$AURORA_OPT_COMMIT``, else ``git``
    in the repository, else "unknown"."""
    if commit:
        return {"commit": commit.strip(), "dirty": None, "commit_source": "given"}
    given = os.environ.get(COMMIT_ENV)
    if given:
        return {"commit": given.strip(), "dirty": None, "commit_source": COMMIT_ENV}
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "commit_source": "unknown"}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status), "commit_source": "git"}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def portable_argv(argv: list[str]) -> list[str]:
    """``argv`` with local absolute prefixes removed: the checkout becomes relative, home becomes ``~``."""
    prefixes = [(str(REPO_ROOT) + os.sep, ""), (str(Path.cwd()) + os.sep, ""), (str(Path.home()) + os.sep, "~/")]
    out = []
    for arg in argv:
        for prefix, replacement in prefixes:
            arg = arg.replace(prefix, replacement)
        out.append(arg)
    return out


def device_name(device: str | torch.device) -> str:
    """The CUDA device's name for a CUDA device, else the device type (``cpu``)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def provenance(
    device: str | torch.device, argv: list[str] | None = None, *, commit: str | None = None
) -> dict[str, Any]:
    """What produced a result: git commit and dirty flag, package version, command line, Python and
    torch versions, device, intra-op threads, machine (OS and CPU model) and the UTC time.

    ``argv`` is the command as run (default ``sys.argv``); a program given by an absolute path
    outside the checkout and home is reduced to its name. ``commit`` names the commit measured where
    the code has no ``.git``.
    """
    from . import __version__

    argv = portable_argv(list(sys.argv if argv is None else argv))
    if argv and Path(argv[0]).is_absolute():  # an installed entry point: its name is the command
        argv[0] = Path(argv[0]).name
    return {
        **git_state(commit),
        "version": __version__,
        "command": shlex.join(argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count()},
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def commit_label(p: dict[str, Any]) -> str:
    """The commit of a :func:`provenance` record as a result prints it: 12 hex digits, marked if the
    tree was dirty, or "not recorded"."""
    if p["commit"] is None:
        return "not recorded"
    return p["commit"][:12] + (" (dirty tree)" if p["dirty"] else "")


def code_line(p: dict[str, Any]) -> str:
    """The closing line of a result's markdown: version, commit, command and time of the run."""
    return f"Code: aurora-opt {p['version']}, commit {commit_label(p)}; `{p['command']}`; {p['utc']}."


def write_result(out: Path, name: str, report: dict[str, Any], markdown: str) -> None:
    """Write ``out/name.json`` (the report, provenance included) and ``out/name.md`` beside it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
