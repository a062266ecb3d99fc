"""Checks of prediction input for multi-domain models, run inside stock ``nnUNetv2_predict``.

A multi-domain model reads each case's domain from its LAST input channel, a constant image whose
value is the domain code (DESIGN.md, decision 3). Stock nnU-Net checks none of this: it groups the
input files by case id, does not compare the number of channel files with the model's channels,
and the network only sees a preprocessed tile. A case without its code channel, with a
non-constant last channel, or with an unknown code therefore fails (at best) in the middle of a
prediction run, after other cases' outputs were written, with an error that does not name the case.

This module checks every input case BEFORE nnU-Net writes anything (nnU-Net writes
``predict_from_raw_data_args.json``, ``dataset.json`` and ``plans.json`` into the output folder
first thing in ``predict_from_files``), and raises one :class:`~nnunetv2_mtmd.errors.InputDataError`
naming every bad case and what is wrong with it:

- the case has exactly the channel files ``_0000 .. _{C}`` of the model's dataset.json (``C`` =
  code channel index): a missing code channel is reported as such;
- every channel file is readable; the code channel is finite and constant (max - min <= 1e-3);
- its value is a known domain code ``1..K`` (within 1e-3 of an integer).

How it is hooked in (documented trade-off, see docs/reliability.md): nnU-Net builds the network of
a trained model through the trainer class named in the checkpoint
(``nnUNetTrainerMTMD*.build_network_architecture``). That classmethod calls
:func:`install_predictor_input_check`, which wraps ``nnUNetPredictor.predict_from_files``,
``predict_from_files_sequential``, ``predict_from_list_of_npy_arrays`` and
``predict_single_npy_array`` once (idempotent). The wrappers are a monkeypatch of nnU-Net, so they
live with the plugin's other upstream patches in :mod:`nnunetv2_mtmd.compat` (re-exported here);
this module holds the checks they run. The wrappers run the checks only when the predictor's
network is a multi-domain U-Net, and otherwise call nnU-Net's method unchanged. The hook fails
safe: if nnU-Net's API changes so that it cannot be installed, or the checker itself fails
unexpectedly, a warning is logged and prediction runs as in stock nnU-Net, where the network still
refuses codes outside ``1..K`` (``decode_domain``). The same checks are available without nnU-Net's
predictor: :func:`check_prediction_inputs`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# the predictor hook is an upstream patch: it lives in compat (which imports this module lazily)
from nnunetv2_mtmd.compat import install_predictor_input_check
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError

__all__ = [
    "CODE_TOLERANCE",
    "CaseProblem",
    "check_code_values",
    "check_prediction_arrays",
    "check_prediction_inputs",
    "group_input_files",
    "install_predictor_input_check",
    "predictor_domain_spec",
    "raise_for_problems",
]

#: Largest allowed spread of the code channel, and distance of its value from an integer code.
CODE_TOLERANCE = 1e-3
#: At most this many bad cases are listed in one error message.
MAX_LISTED = 20


@dataclass(frozen=True)
class CaseProblem:
    """One bad input case: its id and what is wrong."""

    case: str
    message: str


# ------------------------------------------------------------------------------------------ checks
def group_input_files(source: str | Path | Sequence[Sequence[str]], file_ending: str
                      ) -> tuple[dict[str, list[Path]], list[CaseProblem]]:
    """Group input files by case as nnU-Net does: ``<case>_XXXX<file_ending>``.

    ``source`` is an input folder or nnU-Net's list of lists of files (one list per case; the case
    id is the first file's name without ``_XXXX<ending>``). Returns ``({case: [files]}, problems)``;
    files whose names do not follow the pattern are reported as problems."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    groups: dict[str, list[Path]] = {}
    problems: list[CaseProblem] = []
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputDataError(f"Input folder {folder} does not exist.")
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.endswith(file_ending))
        for f in files:
            m = pattern.match(f.name)
            if m:
                groups.setdefault(m.group(1), []).append(f)
            else:
                problems.append(CaseProblem(f.name, f"file name is not <case>_XXXX{file_ending} "
                                                    "(4-digit channel index), so nnU-Net cannot tell its case"))
        return groups, problems
    for i, case_files in enumerate(source):
        paths = [Path(p) for p in case_files]
        if not paths:
            problems.append(CaseProblem(f"#{i}", "empty list of files"))
            continue
        m = pattern.match(paths[0].name)
        case = m.group(1) if m else paths[0].name
        groups.setdefault(case, []).extend(paths)
    return groups, problems


def check_code_values(values: np.ndarray, spec: DomainSpec) -> str | None:
    """Why ``values`` (the code channel of one case, any shape) is not a valid domain code image, or None."""
    values = np.asarray(values)
    if values.size == 0:
        return "the code channel is empty"
    if not np.all(np.isfinite(values)):
        return "the code channel contains NaN or inf"
    lo, hi = float(values.min()), float(values.max())
    known = ", ".join(f"{d.code}={d.name}" for d in spec.domains)
    if hi - lo > CODE_TOLERANCE:
        return (f"the last channel (the domain code channel) is not constant: values from {lo:g} to {hi:g}. "
                f"It must be a constant image holding the domain code ({known}); is an image channel in its place?")
    code = round(hi)
    if abs(hi - code) > CODE_TOLERANCE or not 1 <= code <= spec.num_domains:
        return (f"the code channel holds {hi:g}, which is not a domain code of this model ({known}); "
                "0 or an image value usually means the code channel is missing")
    return None


def _channel_index(path: Path, file_ending: str) -> int | None:
    m = re.match(r"^.+_(\d{4})" + re.escape(file_ending) + "$", path.name)
    return int(m.group(1)) if m else None


def check_prediction_inputs(
    source: str | Path | Sequence[Sequence[str]],
    dataset_json: dict[str, Any],
    read_fn: Callable[[Path], np.ndarray] | None = None,
) -> list[CaseProblem]:
    """Check every input case of a multi-domain model; return the problems (empty list: all good).

    Args:
        source: input folder or list of lists of channel files (as given to nnU-Net's predictor).
        dataset_json: the model's dataset.json (with its ``mtmd`` block and ``file_ending``).
        read_fn: reads one image file into an array; default: nnU-Net's reader for this dataset.
    """
    spec = DomainSpec.from_dataset_json(dataset_json)
    fe = dataset_json.get("file_ending")
    if not isinstance(fe, str):
        raise InputDataError("The model's dataset.json has no 'file_ending'.")
    n_channels = spec.code_channel + 1
    groups, problems = group_input_files(source, fe)
    if not groups and not problems:
        return []
    prepare = (f"add the code channel with nnUNetv2_mtmd_prepare_input -i <cases> -o <prepared> -d <dataset> "
               f"--domain <{'|'.join(spec.names)}>")
    reader = read_fn
    for case, files in sorted(groups.items()):
        chans = sorted(_channel_index(f, fe) for f in files if _channel_index(f, fe) is not None)
        if chans != list(range(n_channels)):
            if chans == list(range(n_channels - 1)):
                msg = (f"has {len(chans)} channel file(s) ({_fmt(chans)}) but the model needs {n_channels}: the domain "
                       f"code channel _{spec.code_channel:04d}{fe} is missing; {prepare}")
            else:
                msg = (f"has channel files {_fmt(chans)}, expected _0000.._{spec.code_channel:04d} "
                       f"({n_channels - 1} image channel(s) + the domain code channel, last)")
            problems.append(CaseProblem(case, msg))
            continue
        code_file = next(f for f in files if _channel_index(f, fe) == spec.code_channel)
        if reader is None:
            reader = _default_reader(dataset_json, code_file)
        try:
            values = reader(code_file)
        except Exception as e:  # unreadable file: report it with the case
            problems.append(CaseProblem(case, f"cannot read {code_file.name}: {type(e).__name__}: "
                                              f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}"))
            continue
        why = check_code_values(values, spec)
        if why:
            problems.append(CaseProblem(case, f"{code_file.name}: {why}"))
    return problems


def check_prediction_arrays(images: Sequence[np.ndarray], names: Sequence[str], dataset_json: dict[str, Any]
                            ) -> list[CaseProblem]:
    """The same checks for arrays ``(C + 1, *spatial)`` given to the predictor's numpy entry points."""
    spec = DomainSpec.from_dataset_json(dataset_json)
    n_channels = spec.code_channel + 1
    problems = []
    for img, name in zip(images, names):
        arr = np.asarray(img)
        if arr.ndim < 2 or arr.shape[0] != n_channels:
            n = arr.shape[0] if arr.ndim else 0
            problems.append(CaseProblem(name, f"array of shape {tuple(arr.shape)} has {n} channel(s), the model "
                                              f"needs {n_channels} (image channels + the domain code channel, last)"))
            continue
        why = check_code_values(arr[-1], spec)
        if why:
            problems.append(CaseProblem(name, why))
    return problems


def raise_for_problems(problems: Sequence[CaseProblem], what: str = "input case(s)") -> None:
    """Raise one :class:`InputDataError` listing the problems (no-op for an empty list)."""
    if not problems:
        return
    lines = [f"  - case '{p.case}': {p.message}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    raise InputDataError(
        f"{len(problems)} {what} cannot be predicted by this multi-domain model; nothing was predicted or "
        "written. Every case needs its image channel(s) and, as last channel, a constant image holding its "
        "domain code (nnunetv2-mtmd input check):\n" + "\n".join(lines)
    )


def predictor_domain_spec(predictor: Any) -> DomainSpec | None:
    """The domain spec of an nnU-Net predictor whose network is a multi-domain U-Net (looked up under
    DDP / torch.compile wrappers), else None: the predictor hook checks only those."""
    from nnunetv2_mtmd.architectures.unet import MultiDomainUNetBase, unwrap_network

    net = getattr(predictor, "network", None)
    if net is None or not isinstance(unwrap_network(net), MultiDomainUNetBase):
        return None
    return DomainSpec.from_dataset_json(predictor.dataset_json)


def _fmt(chans: list[int]) -> str:
    return ", ".join(f"_{c:04d}" for c in chans) or "none"


def _default_reader(dataset_json: dict[str, Any], example: Path) -> Callable[[Path], np.ndarray]:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    rw = determine_reader_writer_from_dataset_json(dataset_json, str(example), verbose=False)()
    return lambda p: rw.read_images((str(p),))[0]
