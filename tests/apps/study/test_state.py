"""nnunetv2_mtmd/study/state.py: the commit of the code that writes a report."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from nnunetv2_mtmd.apps.study import (
    code_commit,
)
from tests.apps.study.helpers import REPO


@pytest.mark.parametrize("content, expected", [
    ("0123456789abcdef0123456789abcdef01234567\n", "0123456789ab"),  # filled in by git archive
    ("$Format:%H$\n", None),  # not filled in, and not in a git checkout
    ("", None),
])
def test_code_commit_outside_a_checkout(tmp_path, content, expected):
    (tmp_path / "COMMIT").write_text(content)
    assert code_commit(tmp_path / "COMMIT") == expected
    assert code_commit(tmp_path / "missing") is None


@pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_code_commit_of_the_checkout_and_of_a_git_archive_snapshot(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # the working tree: git rev-parse (plus -dirty when the package has uncommitted changes)
    assert code_commit().split("-")[0] == head[:12]
    # a snapshot as the study runs from: git archive fills in COMMIT (export-subst)
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "nnunetv2_mtmd/COMMIT"], capture_output=True,
                         check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=tar, check=True)
    assert (tmp_path / "nnunetv2_mtmd" / "COMMIT").read_text().strip() == head
    assert code_commit(tmp_path / "nnunetv2_mtmd" / "COMMIT") == head[:12]
