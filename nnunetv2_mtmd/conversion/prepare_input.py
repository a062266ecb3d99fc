"""Turn a folder of new cases of one domain into ``nnUNetv2_predict`` input (``nnUNetv2_mtmd_prepare_input``).

A multi-domain model reads the domain of an image from its LAST input channel (docs/design.md,
"Domain code channel"). New cases come as ordinary nnU-Net input, ``IN/<case>_0000<ending>`` ...
``IN/<case>_{C-1:04d}<ending>`` with the ``C`` image channels of the merged dataset. This module
writes ``OUT/<case>_0000<ending>`` ... (byte-for-byte copies) plus ``OUT/<case>_{C:04d}<ending>``,
a float32 image with the geometry of channel 0 whose every voxel is the domain code (domain index
+ 1). Then ``nnUNetv2_predict -i OUT ...`` works unchanged.

Case ids are kept by default. With ``prefix=True`` they become ``<domain>_<case>`` (unless they
already start with that), the form of the merged training data, so that
``nnUNetv2_mtmd_export_labels`` can tell the domain from the file name alone.

The merged dataset's dataset.json (channel count, file ending, domain block) is found by
:func:`find_dataset_json`: ``dataset`` may be a path to a dataset.json or to a folder holding one, or
an id / full name looked up in ``$nnUNet_raw``, then ``$nnUNet_preprocessed``, then
``$nnUNet_results/DatasetXXX_*/<trainer>__<plans>__<configuration>/``.

Errors (unknown domain, a case with the wrong number of channels or channels on different voxel
grids, input that already carries the code channel) leave no output folder behind.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_mtmd.domains import Domain, DomainSpec
from nnunetv2_mtmd.errors import DomainSpecError, InputDataError
from nnunetv2_mtmd.io import (
    atomic_output_dir,
    constant_like,
    describe_geometry,
    find_dataset_json,
    load_json,
    read_image,
    safe_child,
    same_geometry,
)

logger = logging.getLogger(__name__)


def load_merged_dataset(dataset: str | int | Path) -> tuple[DomainSpec, dict[str, Any], Path]:
    """``(domain spec, dataset.json dict, dataset.json path)`` of a merged multi-domain dataset."""
    path = find_dataset_json(dataset)
    dj = load_json(path)
    spec = DomainSpec.from_dataset_json(path)
    if not isinstance(dj.get("file_ending"), str):
        raise InputDataError(f"{path}: missing 'file_ending'.")
    return spec, dj, path


def resolve_domain(spec: DomainSpec, domain: str | int, where: str = "--domain") -> Domain:
    """A domain given by name (``lumbar``) or code (``1`` or ``"1"``); ``where`` prefixes the error."""
    try:
        if isinstance(domain, int) or (isinstance(domain, str) and domain.isdigit()):
            return spec.by_code(int(domain))
        return spec.by_name(str(domain))
    except DomainSpecError as e:
        raise DomainSpecError(
            f"{where}: {e} Give a name or code of this dataset's domains "
            f"({', '.join(f'{d.name}={d.code}' for d in spec.domains)})."
        ) from e


def _channels_of(folder: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    pat = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = pat.match(p.name)
        if m and not p.name.startswith("."):
            cases.setdefault(m.group(1), {})[int(m.group(2))] = p
    return cases


def paths_overlap(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same folder or one lies inside the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or b in a.parents or a in b.parents


def _check_folders(input_folder: Path, output_folder: Path) -> None:
    """The input folder exists and the output folder lies outside it."""
    if not input_folder.is_dir():
        raise InputDataError(f"Input folder {input_folder} does not exist.")
    if paths_overlap(input_folder, output_folder):
        raise InputDataError(
            f"Output folder {output_folder} and input folder {input_folder} overlap; write to a separate "
            "folder."
        )


def _check_channels(
    cases: dict[str, dict[int, Path]], input_folder: Path, dj: dict[str, Any], dj_path: Path, n_img: int
) -> None:
    """Every case has exactly the ``n_img`` image channels of the dataset (and not the code channel yet)."""
    fe = dj["file_ending"]
    expected = list(range(n_img))
    names = dj.get("channel_names", {})
    image_names = ", ".join(f"{c}: {names.get(str(c), '?')}" for c in expected)
    for case, chans in cases.items():
        if sorted(chans) == list(range(n_img + 1)):
            raise InputDataError(
                f"Case '{case}' in {input_folder} already has {n_img + 1} channels ({case}_{n_img:04d}{fe} "
                f"exists), but dataset {dj_path.parent.name} has {n_img} image channel(s) plus the code "
                f"channel {n_img}: this input looks already prepared. Pass it to nnUNetv2_predict directly, "
                "or give the original cases (without the code channel)."
            )
        if sorted(chans) != expected:
            raise InputDataError(
                f"Case '{case}' in {input_folder} has channels {sorted(chans)}, expected {expected} "
                f"({', '.join(f'{case}_{c:04d}{fe}' for c in expected)}): the image channels of dataset "
                f"{dj_path.parent.name} are {image_names}; the domain code channel {n_img} is added by this "
                "command."
            )


def _output_ids(cases: dict[str, dict[int, Path]], dom: Domain, prefix: bool, input_folder: Path) -> dict[str, str]:
    """``{input case id: output case id}``; ids that the prefix makes equal are an error."""
    out_ids = {
        case: case if not prefix or case.startswith(f"{dom.name}_") else dom.case_id(case) for case in cases
    }
    clashes = sorted(c for c in cases if list(out_ids.values()).count(out_ids[c]) > 1)
    if clashes:
        raise InputDataError(
            f"Cases {', '.join(clashes)} in {input_folder} would all be written as '{out_ids[clashes[0]]}' "
            "with the domain prefix; rename one of them or run without --prefix."
        )
    return out_ids


def _prepare_case(case: str, files: list[Path], out_id: str, dom: Domain, fe: str, tmp: Path) -> list[Path]:
    """Copy the channel ``files`` of one case into ``tmp`` as ``out_id`` and add its code channel.

    Returns the written files (code channel last)."""
    imgs = [read_image(f) for f in files]
    for f, im in zip(files[1:], imgs[1:]):
        if not same_geometry(imgs[0], im):
            raise InputDataError(
                f"Case '{case}': channels {files[0]} and {f} have different geometry "
                f"({files[0].name}: {describe_geometry(imgs[0])}; "
                f"{f.name}: {describe_geometry(im)}). All channels of a case must share one voxel "
                "grid; resample them onto channel 0's grid."
            )
    outs = []
    for c, f in enumerate(files):
        dst = safe_child(tmp, f"{out_id}_{c:04d}{fe}")
        shutil.copyfile(f, dst)
        outs.append(dst)
    code_file = safe_child(tmp, f"{out_id}_{len(files):04d}{fe}")
    sitk.WriteImage(constant_like(imgs[0], float(dom.code)), str(code_file), True)
    outs.append(code_file)
    return outs


def prepare_input(
    input_folder: Path,
    output_folder: Path,
    dataset: str | int | Path,
    domain: str | int,
    prefix: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, list[Path]]:
    """Copy every case of ``input_folder`` to ``output_folder`` and add the domain code channel.

    Args:
        input_folder: new cases, ``<case>_0000<ending>`` ... (the merged dataset's image channels,
            without the code channel).
        output_folder: created (all-or-nothing); must not exist unless ``overwrite``.
        dataset: the merged dataset (id, name or path; see :func:`find_dataset_json`).
        domain: domain name or code of all cases in ``input_folder``.
        prefix: write case ids as ``<domain>_<case>`` (default: keep the ids).
        overwrite: replace an existing ``output_folder``.
        progress: show a tqdm progress bar.

    Returns:
        ``{output case id: [channel files]}`` as written (code channel last).
    """
    spec, dj, dj_path = load_merged_dataset(dataset)
    dom = resolve_domain(spec, domain, f"--domain (dataset {dj_path.parent.name})")
    fe = dj["file_ending"]
    n_img = spec.code_channel
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    _check_folders(input_folder, output_folder)
    cases = _channels_of(input_folder, fe)
    if not cases:
        seen = sorted(p.name for p in input_folder.iterdir() if not p.name.startswith("."))[:5]
        raise InputDataError(
            f"No input images in {input_folder}: expected files named <case>_0000{fe} (file ending from "
            f"{dj_path}), found {seen or 'an empty folder'}."
        )
    _check_channels(cases, input_folder, dj, dj_path, n_img)
    out_ids = _output_ids(cases, dom, prefix, input_folder)
    written: dict[str, list[Path]] = {}
    with atomic_output_dir(output_folder, overwrite=overwrite) as tmp:
        for case, chans in tqdm(
            cases.items(), desc=f"prepare_input ({dom.name})", unit="case", disable=not progress
        ):
            files = [chans[c] for c in range(n_img)]
            outs = _prepare_case(case, files, out_ids[case], dom, fe, tmp)
            written[out_ids[case]] = [output_folder / p.name for p in outs]
    logger.info(
        "Wrote %d case(s) of domain '%s' (code %d) to %s.", len(written), dom.name, dom.code, output_folder
    )
    return written
