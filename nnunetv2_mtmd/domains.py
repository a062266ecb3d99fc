"""The domain block of a merged multi-domain dataset.json (docs/design.md, "The domain block").

A merged dataset has one unified label space: background 0, then each domain's labels in domain
order, named ``<domain>_<label>``. The domain of an image travels as its LAST input channel, a
constant image whose value is the domain code (domain index + 1), channel name ``noNorm``.
dataset.json carries a block under the key ``"mtmd"``::

    "mtmd": {
      "format_version": 1,
      "code_channel": 1,
      "domains": [
        {"name": "ankle", "code": 1, "source_dataset": "Dataset911_SynthAnkle",
         "num_cases": 12, "num_test_cases": 0,
         "labels": {"calcaneus": {"unified": 1, "original": 1},
                    "talus": {"unified": 2, "original": 2}}},
        ...
      ]
    }

Everything downstream (planner, trainer, network, evaluation, label export) reads it through
:class:`DomainSpec`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_mtmd.errors import DomainSpecError, did_you_mean

MTMD_KEY = "mtmd"
FORMAT_VERSION = 1
CODE_CHANNEL_NAME = "noNorm"
#: Domain names become case-id prefixes and file-name parts: no separators, no underscores (the
#: underscore separates domain and original case id / label name, so it must stay unambiguous).
DOMAIN_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")


def validate_domain_name(name: Any, where: str = "domain name") -> str:
    """Check that ``name`` is a safe domain name and return it; raise :class:`DomainSpecError` otherwise."""
    if not isinstance(name, str) or not DOMAIN_NAME_PATTERN.fullmatch(name):  # fullmatch: no trailing "\n"
        raise DomainSpecError(
            f"{where}: {name!r} is not a valid domain name. Expected 1-32 characters, letters, digits "
            "and '-', starting with a letter (no spaces, no path separators, no '_': the underscore "
            "separates the domain from the case id in '<domain>_<case>'). Example: 'knee' or 'knee-left'."
        )
    return name


def sanitize_domain_name(text: str) -> str:
    """Turn a dataset name such as ``Dataset901_Lumbar_MR`` into a valid default domain name."""
    text = re.sub(r"^Dataset\d{3}_", "", text)
    text = re.sub(r"[^A-Za-z0-9-]", "", text)
    if not text or not text[0].isalpha():
        text = "d" + text
    return text[:32]


@dataclass(frozen=True)
class DomainLabel:
    """One structure of one domain: its original name and id, and its id in the unified space."""

    name: str
    original_id: int
    unified_id: int


@dataclass(frozen=True)
class Domain:
    """One domain (one source dataset) of a merged multi-domain dataset."""

    name: str
    code: int
    source_dataset: str
    labels: tuple[DomainLabel, ...]
    num_cases: int
    num_test_cases: int = 0

    @property
    def index(self) -> int:
        return self.code - 1

    @property
    def unified_ids(self) -> tuple[int, ...]:
        return tuple(lab.unified_id for lab in self.labels)

    def unified_name(self, label: DomainLabel | str) -> str:
        return f"{self.name}_{label.name if isinstance(label, DomainLabel) else label}"

    def unified_to_original(self) -> dict[int, int]:
        """Mapping unified id -> original id, background included (0 -> 0)."""
        return {0: 0, **{lab.unified_id: lab.original_id for lab in self.labels}}

    def original_to_unified(self) -> dict[int, int]:
        """Mapping original id -> unified id, background included (0 -> 0)."""
        return {0: 0, **{lab.original_id: lab.unified_id for lab in self.labels}}

    def case_id(self, original_case_id: str) -> str:
        return f"{self.name}_{original_case_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "code": self.code,
            "source_dataset": self.source_dataset,
            "num_cases": self.num_cases,
            "num_test_cases": self.num_test_cases,
            "labels": {lab.name: {"unified": lab.unified_id, "original": lab.original_id} for lab in self.labels},
        }


def _require(d: dict, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict):
        raise DomainSpecError(f"{where}: expected a JSON object, found {type(d).__name__}.")
    if key not in d:
        raise DomainSpecError(
            f"{where}: missing key '{key}'." + did_you_mean(key, d.keys())
            + " Re-create the dataset with nnUNetv2_mtmd_merge or add the key."
        )
    val = d[key]
    # bool is an int in Python; a code of `true` is still wrong.
    if isinstance(val, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise DomainSpecError(f"{where}: key '{key}' must be {_tname(typ)}, found bool {val!r}.")
    if not isinstance(val, typ):
        raise DomainSpecError(f"{where}: key '{key}' must be {_tname(typ)}, found {type(val).__name__} {val!r}.")
    return val


def _tname(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


@dataclass(frozen=True)
class DomainSpec:
    """All domains of a merged dataset, in code order, plus the index of the code channel."""

    domains: tuple[Domain, ...]
    code_channel: int

    # ----------------------------------------------------------------------------------- queries
    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def num_classes(self) -> int:
        """Number of unified classes including background."""
        return 1 + sum(len(d.labels) for d in self.domains)

    @property
    def domain_label_ids(self) -> list[list[int]]:
        """Unified label ids of every domain (background excluded), in domain order.

        This compact form is what the network needs (plans ``arch_kwargs``)."""
        return [list(d.unified_ids) for d in self.domains]

    def by_name(self, name: str) -> Domain:
        for d in self.domains:
            if d.name == name:
                return d
        raise DomainSpecError(f"Unknown domain '{name}'." + did_you_mean(name, self.names))

    def by_code(self, code: int) -> Domain:
        if isinstance(code, (int, np.integer)) and 1 <= int(code) <= self.num_domains:
            return self.domains[int(code) - 1]
        raise DomainSpecError(
            f"Unknown domain code {code!r}: this dataset has codes 1..{self.num_domains} "
            f"({', '.join(f'{d.code}={d.name}' for d in self.domains)})."
        )

    def domain_of_case(self, case_id: str) -> Domain:
        """Domain of a case from its ``<domain>_<original id>`` identifier."""
        prefix = case_id.split("_", 1)[0]
        for d in self.domains:
            if d.name == prefix and "_" in case_id:
                return d
        raise DomainSpecError(
            f"Case '{case_id}' does not start with '<domain>_': known domains are {', '.join(self.names)}."
            + did_you_mean(prefix, self.names)
        )

    def label_names(self) -> dict[str, int]:
        """The ``labels`` entry of the merged dataset.json (unified names -> unified ids)."""
        out = {"background": 0}
        for d in self.domains:
            for lab in d.labels:
                out[d.unified_name(lab)] = lab.unified_id
        return out

    def domain_of_label(self) -> np.ndarray:
        """Array ``a`` with ``a[unified_id] = domain index`` (``-1`` for background)."""
        a = -np.ones(self.num_classes, dtype=np.int64)
        for d in self.domains:
            a[list(d.unified_ids)] = d.index
        return a

    # ------------------------------------------------------------------------------ (de)serialise
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "code_channel": self.code_channel,
            "domains": [d.to_json() for d in self.domains],
        }

    @classmethod
    def from_json(cls, block: Any, where: str = f"dataset.json['{MTMD_KEY}']") -> DomainSpec:
        """Parse and validate a domain block; every problem raises :class:`DomainSpecError` naming the key."""
        if not isinstance(block, dict):
            raise DomainSpecError(f"{where}: expected a JSON object, found {type(block).__name__}.")
        version = _require(block, "format_version", int, where)
        if version != FORMAT_VERSION:
            raise DomainSpecError(
                f"{where}['format_version'] is {version}, this nnunetv2-mtmd reads version {FORMAT_VERSION}. "
                "Re-create the dataset with this version's nnUNetv2_mtmd_merge."
            )
        code_channel = _require(block, "code_channel", int, where)
        if code_channel < 1:
            raise DomainSpecError(
                f"{where}['code_channel'] is {code_channel}; it must be >= 1 (the image channels come first)."
            )
        raw_domains = _require(block, "domains", list, where)
        if not raw_domains:
            raise DomainSpecError(f"{where}['domains'] is empty; a multi-domain dataset needs at least one domain.")
        domains: list[Domain] = []
        seen_ids: dict[int, str] = {}
        seen_names: set[str] = set()
        for i, rd in enumerate(raw_domains):
            w = f"{where}['domains'][{i}]"
            name = validate_domain_name(_require(rd, "name", str, w), f"{w}['name']")
            if name in seen_names:
                raise DomainSpecError(f"{w}['name']: domain name '{name}' is used twice; names must be unique.")
            seen_names.add(name)
            code = _require(rd, "code", int, w)
            if code != i + 1:
                raise DomainSpecError(
                    f"{w}['code'] is {code}, expected {i + 1}: codes are the domain index + 1, in list order."
                )
            source = _require(rd, "source_dataset", str, w)
            num_cases = _require(rd, "num_cases", int, w)
            num_test = rd.get("num_test_cases", 0)
            if not isinstance(num_test, int) or isinstance(num_test, bool) or num_test < 0 or num_cases < 0:
                raise DomainSpecError(f"{w}: 'num_cases' and 'num_test_cases' must be non-negative integers.")
            raw_labels = _require(rd, "labels", dict, w)
            if not raw_labels:
                raise DomainSpecError(f"{w}['labels'] is empty; every domain needs at least one foreground label.")
            labels = []
            seen_orig: set[int] = set()
            for lname, ids in raw_labels.items():
                lw = f"{w}['labels']['{lname}']"
                uid = _require(ids, "unified", int, lw)
                oid = _require(ids, "original", int, lw)
                if uid < 1 or oid < 1:
                    raise DomainSpecError(
                        f"{lw}: ids must be >= 1 (0 is background), found unified={uid}, original={oid}."
                    )
                if uid in seen_ids:
                    raise DomainSpecError(
                        f"{lw}['unified'] = {uid} is already used by '{seen_ids[uid]}': unified label ids of "
                        "different domains must not overlap."
                    )
                if oid in seen_orig:
                    raise DomainSpecError(f"{lw}['original'] = {oid} appears twice in domain '{name}'.")
                seen_ids[uid] = f"{name}_{lname}"
                seen_orig.add(oid)
                labels.append(DomainLabel(name=str(lname), original_id=oid, unified_id=uid))
            domains.append(Domain(name, code, source, tuple(labels), num_cases, num_test))
        n_fg = len(seen_ids)
        if sorted(seen_ids) != list(range(1, n_fg + 1)):
            raise DomainSpecError(
                f"{where}: unified label ids must be consecutive 1..{n_fg} (nnU-Net needs consecutive labels), "
                f"found {sorted(seen_ids)}."
            )
        return cls(tuple(domains), code_channel)

    @classmethod
    def from_dataset_json(cls, dataset_json: dict[str, Any] | str | Path) -> DomainSpec:
        """Read the domain block of a merged dataset.json (dict or path) and check it against the rest."""
        where = "dataset.json"
        if not isinstance(dataset_json, dict):
            where = str(dataset_json)
            try:
                with open(dataset_json) as f:
                    dataset_json = json.load(f)
            except FileNotFoundError as e:
                raise DomainSpecError(f"{where} does not exist.") from e
            except json.JSONDecodeError as e:
                raise DomainSpecError(f"{where} is not valid JSON: {e}.") from e
        if MTMD_KEY not in dataset_json:
            raise DomainSpecError(
                f"{where} has no '{MTMD_KEY}' block: this is not a multi-domain dataset. Create one with "
                "nnUNetv2_mtmd_merge -d <ids> -o <new id>."
            )
        spec = cls.from_json(dataset_json[MTMD_KEY], where=f"{where}['{MTMD_KEY}']")
        spec.check_against_dataset_json(dataset_json, where)
        return spec

    def check_against_dataset_json(self, dataset_json: dict[str, Any], where: str = "dataset.json") -> None:
        channels = dataset_json.get("channel_names", dataset_json.get("modality"))
        if not isinstance(channels, dict):
            raise DomainSpecError(f"{where}: missing or malformed 'channel_names'.")
        if self.code_channel != len(channels) - 1:
            raise DomainSpecError(
                f"{where}['{MTMD_KEY}']['code_channel'] is {self.code_channel} but the dataset has "
                f"{len(channels)} channels: the code channel must be the last one ({len(channels) - 1})."
            )
        cname = channels.get(str(self.code_channel))
        if not isinstance(cname, str) or cname.lower() != CODE_CHANNEL_NAME.lower():
            raise DomainSpecError(
                f"{where}['channel_names']['{self.code_channel}'] is {cname!r}, expected '{CODE_CHANNEL_NAME}' "
                "(the domain code channel must not be normalised)."
            )
        labels = dataset_json.get("labels")
        if not isinstance(labels, dict):
            raise DomainSpecError(f"{where}: missing or malformed 'labels'.")
        expected = self.label_names()
        if {k: v for k, v in labels.items()} != expected:
            raise DomainSpecError(
                f"{where}['labels'] does not match the domain block: expected {expected}, found {labels}."
            )


def load_domain_spec(dataset_json: dict[str, Any] | str | Path) -> DomainSpec:
    """Shorthand for :meth:`DomainSpec.from_dataset_json`."""
    return DomainSpec.from_dataset_json(dataset_json)


def check_plans_architecture(arch_kwargs: Any, spec: DomainSpec,
                             where: str = "plans['configurations'][...]['architecture']['arch_kwargs']") -> None:
    """Check the multi-domain part of a plans ``arch_kwargs`` against the dataset's domain block.

    ``domain_label_ids`` must be a list with one list of unified label ids per domain, equal to
    ``spec.domain_label_ids``; a domain-specific ``norm_op_kwargs['num_domains']``, if present, must
    be ``spec.num_domains``. Raises :class:`DomainSpecError` naming the key otherwise (plans made for
    another merge of the data, or edited by hand)."""
    fix = " Re-run nnUNetv2_plan_and_preprocess -pl nnUNetPlannerMTMD on this dataset."
    if not isinstance(arch_kwargs, dict):
        raise DomainSpecError(f"{where}: expected a JSON object, found {type(arch_kwargs).__name__}.{fix}")
    if "domain_label_ids" not in arch_kwargs:
        raise DomainSpecError(f"{where}: missing key 'domain_label_ids' (unified label ids per domain).{fix}")
    ids = arch_kwargs["domain_label_ids"]
    ok = isinstance(ids, (list, tuple)) and all(
        isinstance(d, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in d) for d in ids
    )
    if not ok:
        raise DomainSpecError(
            f"{where}['domain_label_ids']: expected a list of lists of integer label ids, found {ids!r}.{fix}"
        )
    expected = spec.domain_label_ids
    if [list(d) for d in ids] != expected:
        raise DomainSpecError(
            f"{where}['domain_label_ids'] is {[list(d) for d in ids]}, but the dataset's domain block "
            f"({', '.join(spec.names)}) gives {expected}: the plans were made for another dataset.{fix}"
        )
    nkw = arch_kwargs.get("norm_op_kwargs")
    if isinstance(nkw, dict) and "num_domains" in nkw and nkw["num_domains"] != spec.num_domains:
        raise DomainSpecError(
            f"{where}['norm_op_kwargs']['num_domains'] is {nkw['num_domains']!r}, the dataset has "
            f"{spec.num_domains} domains.{fix}"
        )
