"""Provenance: the commit and dirty flag of a real git tree, the env override, no git, no local paths."""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import aurora_opt
from aurora_opt import provenance as prov

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(root: Path, *args: str) -> str:
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@needs_git
def test_commit_and_dirty_flag_of_a_git_tree(tmp_path, monkeypatch):
    monkeypatch.delenv(prov.COMMIT_ENV, raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    monkeypatch.setattr(prov, "REPO_ROOT", tmp_path)
    assert prov.git_state() == {"commit": head, "dirty": False, "commit_source": "git"}
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert prov.git_state()["dirty"] is False  # untracked files do not make the tree dirty
    (tmp_path / "a.txt").write_text("two\n")
    assert prov.git_state() == {"commit": head, "dirty": True, "commit_source": "git"}


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(prov.COMMIT_ENV, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    monkeypatch.setattr(prov, "REPO_ROOT", tmp_path)
    assert prov.git_state() == {"commit": None, "dirty": None, "commit_source": "unknown"}


def test_commit_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(prov, "REPO_ROOT", tmp_path)
    monkeypatch.setenv(prov.COMMIT_ENV, "0123abc")
    assert prov.git_state() == {"commit": "0123abc", "dirty": None, "commit_source": prov.COMMIT_ENV}


def test_commit_given_explicitly_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(prov.COMMIT_ENV, "0123abc")
    assert prov.provenance("cpu", ["x"], commit="4567def")["commit"] == "4567def"
    assert prov.provenance("cpu", ["x"], commit="4567def")["commit_source"] == "given"


def test_record_has_every_field_and_no_local_path(monkeypatch):
    monkeypatch.setenv(prov.COMMIT_ENV, "feedbeef")
    data_path = prov.REPO_ROOT / "docs" / "some data.txt"
    argv = ["/usr/local/bin/aurora-opt", "compare", "--data", str(data_path), "--steps", "3"]
    record = prov.provenance("cpu", argv)
    assert record["commit"] == "feedbeef"
    assert record["version"] == aurora_opt.__version__
    assert record["command"] == shlex.join(["aurora-opt", "compare", "--data", "docs/some data.txt", "--steps", "3"])
    assert record["python"] == platform.python_version() and record["torch"] == torch.__version__
    assert record["device"] == "cpu" and record["threads"] == torch.get_num_threads()
    assert record["machine"]["platform"] == platform.platform() and record["machine"]["cpu"]
    assert record["utc"].endswith("Z") and len(record["utc"]) == len("2026-01-01T00:00:00Z")
    text = json.dumps(record)
    assert str(prov.REPO_ROOT) not in text and str(Path.home()) + "/" not in text
