"""File-system helpers shared by the plugin's commands: dataset lookup, case listing, image I/O and
all-or-nothing output folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunetv2_mtmd.errors import InputDataError, OutputExistsError, did_you_mean

_DATASET_DIR = re.compile(r"^Dataset(\d{3})_(.+)$")


def env_folder(var: str) -> Path:
    """Return the folder named by an nnU-Net environment variable, with a clear error if unset."""
    val = os.environ.get(var)
    if not val:
        raise InputDataError(
            f"Environment variable {var} is not set. Set it as for nnU-Net, e.g. "
            f"'export {var}=/data/{var}' (see nnU-Net's documentation/set_environment_variables.md)."
        )
    return Path(val)


def find_dataset(identifier: str | int, root: Path) -> Path:
    """Resolve a dataset given as id (``901``) or full name (``Dataset901_Lumbar``) inside ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"Dataset root folder {root} does not exist.")
    existing = sorted(p.name for p in root.iterdir() if p.is_dir() and _DATASET_DIR.match(p.name))
    ident = str(identifier)
    if ident.isdigit():
        num = int(ident)
        matches = [n for n in existing if int(_DATASET_DIR.match(n).group(1)) == num]
        if not matches:
            raise InputDataError(
                f"No dataset with id {num} in {root} (found: {', '.join(existing) or 'none'}). "
                "Check the id or the nnUNet_raw variable."
            )
        if len(matches) > 1:
            raise InputDataError(f"Dataset id {num} is ambiguous in {root}: {matches}. Remove one of them.")
        return root / matches[0]
    if ident in existing:
        return root / ident
    raise InputDataError(f"No dataset named '{ident}' in {root}." + did_you_mean(ident, existing))


def dataset_id_in_use(dataset_id: int, roots: list[Path]) -> list[Path]:
    """All folders ``DatasetXXX_*`` with this id in any of ``roots``."""
    found = []
    for r in roots:
        if r and Path(r).is_dir():
            found += [p for p in Path(r).iterdir() if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_")]
    return found


def load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise InputDataError(f"{path} does not exist.") from e
    except json.JSONDecodeError as e:
        raise InputDataError(f"{path} is not valid JSON ({e}). Fix or re-create the file.") from e


def save_json(obj: Any, path: Path) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is renamed over ``path``
    (``os.replace``, atomic on one file system), on any error it is deleted and ``path`` is untouched.

    The one way the plugin writes a file that a crash must not leave half-written (checkpoints,
    splits, state files, reports): ``with atomic_file(p) as tmp: torch.save(obj, tmp)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its file is mode 0600, and a checkpoint or report should get the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def stdout_to(log_path: str | Path | None) -> Iterator[None]:
    """Within the block, ``sys.stdout`` (nnU-Net's prints) is appended to ``log_path`` instead of the
    console; None leaves it alone."""
    if log_path is None:
        yield
        return
    with open(log_path, "a") as f, contextlib.redirect_stdout(f):
        yield


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_save_json(obj: Any, path: str | Path) -> None:
    """:func:`save_json` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        save_json(obj, tmp)


def list_cases(folder: Path, file_ending: str, num_channels: int | None = None) -> dict[str, list[Path]]:
    """Map case id -> channel files ``<case>_XXXX<ending>`` of an nnU-Net image folder.

    With ``num_channels`` given, every case must have exactly channels 0..num_channels-1."""
    folder = Path(folder)
    pat = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.startswith("."):
            continue
        m = pat.match(p.name)
        if m:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = p
    out = {}
    for case, chans in sorted(cases.items()):
        if num_channels is not None and sorted(chans) != list(range(num_channels)):
            raise InputDataError(
                f"Case '{case}' in {folder} has channels {sorted(chans)}, expected 0..{num_channels - 1} "
                f"(files {case}_0000{file_ending} ...)."
            )
        out[case] = [chans[i] for i in sorted(chans)]
    return out


def read_image(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputDataError(f"Cannot read image {path}: {str(e).strip().splitlines()[-1]}") from e


def geometry(img: sitk.Image) -> tuple:
    return (img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    if a.GetSize() != b.GetSize():
        return False
    pairs = ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()), (a.GetDirection(), b.GetDirection()))
    return all(np.allclose(x, y, atol=tol, rtol=tol) for x, y in pairs)


def describe_geometry(img: sitk.Image) -> str:
    return (f"size {img.GetSize()}, spacing {tuple(round(s, 4) for s in img.GetSpacing())}, "
            f"origin {tuple(round(o, 3) for o in img.GetOrigin())}")


def constant_like(img: sitk.Image, value: float) -> sitk.Image:
    """A float32 image with ``img``'s geometry, every voxel equal to ``value``."""
    arr = np.full(sitk.GetArrayViewFromImage(img).shape, value, dtype=np.float32)
    out = sitk.GetImageFromArray(arr, isVector=False)
    out.CopyInformation(img)
    return out


def label_array(img: sitk.Image, path: Path) -> np.ndarray:
    """Integer label array of a label image; non-integer values raise :class:`InputDataError`."""
    arr = sitk.GetArrayFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.round(arr)
        if not np.all(np.abs(arr - rounded) < 1e-3):
            bad = np.unique(arr[np.abs(arr - rounded) >= 1e-3])[:5]
            raise InputDataError(
                f"Label image {path} contains non-integer values (e.g. {bad.tolist()}); label maps must hold "
                "integer label ids. Was an image saved in the labels folder, or was it resampled with linear "
                "interpolation instead of nearest neighbour?"
            )
        arr = rounded
    return arr.astype(np.int64)


@contextlib.contextmanager
def atomic_output_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``, on any error it is deleted.

    So a failing command never leaves a half-written output folder."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"Output folder {final} already exists. Remove it or pass --overwrite.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def safe_child(parent: Path, name: str) -> Path:
    """``parent / name``, refusing names that would leave ``parent`` (``..``, absolute paths, separators)."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise InputDataError(f"Refusing unsafe file name {name!r}: it must be a plain name inside {parent}.")
    p = Path(parent) / name
    if Path(os.path.abspath(p)).parent != Path(os.path.abspath(parent)):
        raise InputDataError(f"Refusing file name {name!r}: it resolves outside {parent}.")
    return p


def find_dataset_json(dataset: str | int | Path) -> Path:
    """Locate the dataset.json of a merged dataset.

    ``dataset`` is a path (a dataset.json or a folder containing one) or an id / full name, looked up
    in ``$nnUNet_raw``, ``$nnUNet_preprocessed`` and ``$nnUNet_results`` (first hit wins)."""
    p = Path(str(dataset))
    if isinstance(dataset, Path) or ("/" in str(dataset) or os.sep in str(dataset)) or p.suffix == ".json":
        if p.is_file():
            return p
        if (p / "dataset.json").is_file():
            return p / "dataset.json"
        raise InputDataError(f"{p} is neither a dataset.json nor a folder containing one.")
    looked: list[str] = []
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(var)
        if not root or not Path(root).is_dir():
            looked.append(f"${var} (unset)" if not root else f"${var}={root} (missing)")
            continue
        try:
            folder = find_dataset(dataset, Path(root))
        except InputDataError:
            looked.append(f"${var}={root}")
            continue
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
        if var == "nnUNet_results":
            found = sorted(folder.glob("*/dataset.json"))
            if found:
                return found[0]
        looked.append(f"{folder} (no dataset.json)")
    raise InputDataError(
        f"Cannot find dataset {dataset!r}: looked in {'; '.join(looked)}. Pass the id of a merged dataset "
        "that exists there, or a path to its dataset.json (-d /path/to/dataset.json)."
    )


# ------------------------------------------------------------------ nnU-Net checkpoints, read safely
def _numpy_safe_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    scalar = core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                           np.int64, np.uint8, np.bool_)]
    return [scalar, np.dtype, *dtypes]


#: numpy types nnU-Net puts into its checkpoints (scalars in the logging lists and ``_best_ema``).
NUMPY_SAFE_GLOBALS = _numpy_safe_globals()


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load an nnU-Net checkpoint with ``weights_only=True`` (plus the numpy allowlist of
    :data:`NUMPY_SAFE_GLOBALS`; nothing else can be unpickled). ``map_location``: as ``torch.load``.

    Raises :class:`InputDataError` naming the file if it is unreadable or holds other objects."""
    import torch  # here, not at import: the conversion commands need no torch

    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "Unsupported global" in line), first[0] if first else "")
        raise InputDataError(
            f"Cannot load checkpoint {path} safely (torch.load weights_only=True): {type(e).__name__}: "
            f"{detail.strip()}. The file is truncated, not an nnU-Net checkpoint, or holds objects other than "
            "tensors, numbers, strings and containers."
        ) from e
    if not isinstance(ckpt, dict):
        raise InputDataError(f"{path} is not an nnU-Net checkpoint (found {type(ckpt).__name__}, expected a dict).")
    return ckpt


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def environ_set(values: dict[str, str]) -> Iterator[None]:
    """Within the block ``os.environ`` holds ``values``; afterwards every key has its previous value
    again (keys that were unset are removed). For nnU-Net, which reads its folder variables from the
    environment at every use and passes them to the workers it spawns."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
