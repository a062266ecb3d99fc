"""nnunetv2_mtmd/io.py helpers not covered elsewhere: environ_set and file_sha256."""

from __future__ import annotations

import hashlib
import os

import pytest

from nnunetv2_mtmd.io import environ_set, file_sha256


def test_environ_set_restores_previous_values_and_removes_new_keys(monkeypatch):
    monkeypatch.setenv("MTMD_TEST_A", "old")
    monkeypatch.delenv("MTMD_TEST_B", raising=False)
    with pytest.raises(RuntimeError), environ_set({"MTMD_TEST_A": "new", "MTMD_TEST_B": "b"}):
        assert (os.environ["MTMD_TEST_A"], os.environ["MTMD_TEST_B"]) == ("new", "b")
        raise RuntimeError("restored even on error")
    assert os.environ["MTMD_TEST_A"] == "old" and "MTMD_TEST_B" not in os.environ


def test_file_sha256_equals_hashlib_over_chunk_boundaries(tmp_path):
    data = os.urandom((1 << 20) + 17)  # more than one 1 MiB chunk
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
