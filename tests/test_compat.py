"""Upstream code the plugin copies, patches or mirrors (``nnunetv2_mtmd.compat``) has not drifted.

For every :data:`~nnunetv2_mtmd.compat.UPSTREAM` entry the source of the installed upstream object
is hashed and compared with the hash recorded when the plugin's code was written: on the recorded
upstream version a mismatch fails and names the object and what to re-check; on any other installed
version (CI pins the recorded ones, .ci/constraints.txt) a mismatch skips with that message. The
other tests check that the entries cover every copy and patch.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

from nnunetv2_mtmd import compat

ROOT = Path(__file__).resolve().parents[1]
#: Names of compat's registry (everything else compat declares is a copy or a patch).
REGISTRY = {"UPSTREAM", "UpstreamCopy", "entries_for", "resolve_upstream", "upstream_source_sha256"}


def _id(entry: compat.UpstreamCopy) -> str:
    return ".".join(entry.upstream.split(".")[-2:])


def _check(entry: compat.UpstreamCopy) -> None:
    """Pass, fail (recorded version installed) or skip (another version) for one entry."""
    installed = importlib.metadata.version(entry.distribution)
    where = (f"{entry.local} ({entry.kind}) was written against {entry.distribution} {entry.version}, "
             f"{installed} is installed")
    try:
        obj = compat.resolve_upstream(entry.upstream)
    except (ImportError, AttributeError) as e:
        msg = f"{entry.upstream} no longer exists ({e}). {where}. Re-check: {entry.recheck}."
    else:
        sha = compat.upstream_source_sha256(obj)
        if sha == entry.sha256:
            return
        msg = (f"The source of {entry.upstream} differs from the one recorded in nnunetv2_mtmd.compat.UPSTREAM. "
               f"{where}. Re-check: {entry.recheck}. Then record sha256 {sha} (and the version).")
    if installed != entry.version:
        pytest.skip(msg)
    pytest.fail(msg)


@pytest.mark.parametrize("entry", compat.UPSTREAM, ids=_id)
def test_upstream_source_is_the_recorded_one(entry):
    _check(entry)


def test_a_changed_upstream_source_fails_on_the_recorded_version_and_skips_on_others():
    entry = compat.entries_for(f"{compat.__name__}.build_dataloaders")[0]
    installed = importlib.metadata.version(entry.distribution)
    changed = dataclasses.replace(entry, sha256="0" * 64, version=installed)
    with pytest.raises(pytest.fail.Exception) as e:
        _check(changed)
    assert entry.upstream in str(e.value) and entry.recheck in str(e.value) and entry.local in str(e.value)
    with pytest.raises(pytest.skip.Exception) as e:
        _check(dataclasses.replace(changed, version="0.0.0"))
    assert entry.upstream in str(e.value) and entry.recheck in str(e.value)
    with pytest.raises(pytest.fail.Exception, match="no longer exists"):
        _check(dataclasses.replace(changed, upstream=f"{entry.upstream}_gone"))


def test_every_copy_in_compat_has_its_entries():
    declared = set(compat.__all__) - REGISTRY
    defined = {name for name, fn in inspect.getmembers(compat, inspect.isfunction)
               if fn.__module__ == compat.__name__ and not name.startswith("_")}
    assert defined - REGISTRY == declared, "compat.__all__ must list every public copy / patch of compat"
    assert declared == {"build_dataloaders", "unet_decoder_forward", "compute_fingerprint", "fold_split",
                        "install_predictor_input_check"}
    for name in sorted(declared):
        entries = compat.entries_for(f"{compat.__name__}.{name}")
        assert entries, f"compat.{name} copies or patches upstream code but has no UPSTREAM entry"
        assert getattr(compat, name).__upstream__ == tuple(e.upstream for e in entries)
        assert any(e.kind in ("copy", "patch") for e in entries)


def test_every_patched_predictor_method_has_an_entry():
    patched = {f"{compat._PREDICTOR}.{name}" for name in compat._CHECKS}
    entries = {e.upstream for e in compat.entries_for(f"{compat.__name__}.install_predictor_input_check")
               if e.kind == "patch"}
    assert patched == entries


def test_entries_are_complete_and_point_at_existing_plugin_objects():
    assert len({(e.upstream, e.local) for e in compat.UPSTREAM}) == len(compat.UPSTREAM)
    for e in compat.UPSTREAM:
        assert e.kind in ("copy", "patch", "mirror")
        assert re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.upstream
        assert e.recheck and e.version and e.distribution
        # the plugin object exists (a stale entry would hide a removed copy)
        module, _, attr = e.local.rpartition(".")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), e.local


def test_constraints_pin_the_recorded_versions():
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    for e in compat.UPSTREAM:
        assert pins.get(e.distribution) == e.version, f"{e.distribution}=={e.version} missing in .ci/constraints.txt"
    env = (ROOT / ".ci" / "env.sh").read_text()
    assert "-c .ci/constraints.txt" in env and ".ci/constraints.txt -nt" in env


def test_resolve_upstream_sees_through_the_predictor_patch():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    assert compat.install_predictor_input_check()
    assert getattr(nnUNetPredictor.predict_from_files, compat._PATCH_MARK)
    original = compat.resolve_upstream(f"{compat._PREDICTOR}.predict_from_files")
    assert not getattr(original, compat._PATCH_MARK, False)
    assert original is nnUNetPredictor.predict_from_files.__wrapped__
    with pytest.raises((ImportError, AttributeError)):
        compat.resolve_upstream(f"{compat._PREDICTOR}.no_such_method")
