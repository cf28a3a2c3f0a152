"""The README's Python runs as written, so it cannot go stale.

Every ```python block of README.md runs, in order, in one fresh interpreter (CPU, one thread, a
temporary working directory), each in a namespace of its own so that a block cannot lean on names
an earlier one defined. Every dotted ``aurora_opt.…`` name the README mentions must resolve after a
plain ``import aurora_opt``, and every module it names (imported, run with ``python -m``, or a
prefix of a dotted name) must import as the first aurora_opt import of a process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# generous: a fresh interpreter imports torch (seconds on a loaded 2-core machine) before any block runs
TIMEOUT_S = 300


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line of the block's first code line, code)`` for every ```python block."""
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    ]


def dotted_names(text: str) -> tuple[list[str], list[str]]:
    """``(attribute paths, module paths)`` of the ``aurora_opt.…`` names in ``text``.

    Module paths are those run with ``python -m`` or imported by an import statement; every other
    dotted name is read as attributes from the ``aurora_opt`` package.
    """
    modules = set(re.findall(r"(?:-m|from|import) (aurora_opt(?:\.\w+)*)", text))
    names = set(re.findall(r"\baurora_opt(?:\.\w+)+", text)) - modules
    return sorted(names), sorted(modules - {"aurora_opt"})


def leaf_modules(names: list[str], modules: list[str]) -> list[str]:
    """The submodules of aurora_opt named by ``modules`` or by a prefix of ``names``, leaves only
    (importing ``a.b.c`` first imports ``a.b``)."""
    found = set(modules)
    for name in names:
        parts = name.split(".")
        for end in range(2, len(parts) + 1):
            prefix = ".".join(parts[:end])
            try:
                spec = importlib.util.find_spec(prefix)
            except ModuleNotFoundError:  # a prefix that is a class or function, not a package
                spec = None
            if spec is None:
                break
            found.add(prefix)
    return sorted(m for m in found if not any(other.startswith(m + ".") for other in found))


def run_fresh(code: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", code]
    return subprocess.run(
        command, input=stdin, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


# Runs each block with its README line numbers, so a traceback points at the README line that failed.
RUN_BLOCKS = """
import json, sys
import torch
torch.set_num_threads(1)
for line, code in json.loads(sys.stdin.read()):
    exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), {"__name__": "__main__"})
"""

# One fresh interpreter loads torch, then forks one child per check, each of which starts with no
# aurora_opt module loaded: the first child does a plain ``import aurora_opt`` and reads every
# dotted name as attributes; each other child imports one module first. Prints the failures.
CHECK_IMPORTS = """
import json, os, sys, traceback
import torch
names, modules = json.loads(sys.stdin.read())

def resolve_names():
    import aurora_opt
    missing = []
    for name in names:
        value = aurora_opt
        for part in name.split(".")[1:]:
            if not hasattr(value, part):
                missing.append(name)
                break
            value = getattr(value, part)
    assert not missing, f"not reachable after import aurora_opt: {missing}"

checks = [("import aurora_opt, then " + ", ".join(names), resolve_names)]
checks += [(f"import {module} first", lambda module=module: __import__(module)) for module in modules]
failed = []
for what, check in checks:
    pid = os.fork()
    if pid == 0:
        try:
            check()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(what)
print(json.dumps(failed))
"""


def test_the_readme_has_python_examples():
    # guards the extraction: the README holds the usage and the diagnostics examples
    assert len(python_blocks(README)) >= 2


def test_every_python_block_runs_as_written(tmp_path):
    proc = run_fresh(RUN_BLOCKS, tmp_path, json.dumps(python_blocks(README)))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the checks fork a clean child per import")
def test_every_aurora_opt_name_resolves_and_every_module_imports_first(tmp_path):
    names, modules = dotted_names(README)
    assert "aurora_opt.diagnostics.NeuronHealth" in names
    proc = run_fresh(CHECK_IMPORTS, tmp_path, json.dumps([names, leaf_modules(names, modules)]))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], proc.stderr
