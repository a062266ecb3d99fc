"""The one scheme registry (nnunetv2_mtmd/schemes.py): hand-written entries, lookups with suggestions,
and the docs table generated from it."""

from __future__ import annotations

import re

import pytest

from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.schemes import BY_NAME, MULTI_DOMAIN, SCHEMES, benchmark_schemes, get_scheme, markdown_table
from tests.conftest import REPO

# name, trainer, label, norm, heads, msc, mjap: the paper's schemes (Boutillon et al. 2022, Table 2)
EXPECTED = [
    ("Individual", "nnUNetTrainer", "Individual", "stock", "stock", None, False),
    ("Shared", "nnUNetTrainerMTMD_Shared", "Shared", "shared", "shared", None, False),
    ("Shared_MJAP", "nnUNetTrainerMTMD_Shared_MJAP", "Shared+MJAP", "shared", "shared", None, True),
    ("DSL", "nnUNetTrainerMTMD_DSL", "DSL", "dsbn", "per_domain", None, False),
    ("DSL_SSC", "nnUNetTrainerMTMD_DSL_SSC", "DSL+SSC", "dsbn", "per_domain", "bottleneck", False),
    ("DSL_MSC", "nnUNetTrainerMTMD_DSL_MSC", "DSL+MSC", "dsbn", "per_domain", "all", False),
    ("DSL_MJAP", "nnUNetTrainerMTMD_DSL_MJAP", "DSL+MJAP", "dsbn", "per_domain", None, True),
    ("DSL_MSC_MJAP", "nnUNetTrainerMTMD", "DSL+MSC+MJAP", "dsbn", "per_domain", "all", True),
    ("DSL_MSC_LT", "nnUNetTrainerMTMD_DSL_MSC_LT", "DSL+MSC+LT", "dsbn", "per_domain", "all", False),
    ("DSL_seed2", "nnUNetTrainerMTMD_DSL_seed2", "DSL (seed 2)", "dsbn", "per_domain", None, False),
]


def test_registry_entries():
    got = [(s.name, s.trainer, s.label, s.norm, s.heads, s.msc, s.mjap) for s in SCHEMES]
    assert got == EXPECTED
    assert [s.name for s in MULTI_DOMAIN] == [e[0] for e in EXPECTED[1:]]


@pytest.mark.parametrize("name, study, debug", [
    ("Individual", "nnUNetTrainer_study", None),
    ("DSL", "nnUNetTrainerMTMD_DSL_study", "nnUNetTrainerMTMD_DSL_debug"),
    ("DSL_MSC_MJAP", "nnUNetTrainerMTMD_study", "nnUNetTrainerMTMD_debug"),
])
def test_derived_trainer_names(name, study, debug):
    assert (BY_NAME[name].study_trainer, BY_NAME[name].debug_trainer) == (study, debug)


def test_benchmark_keys_unchanged():
    # the keys of nnUNetv2_mtmd_benchmark's JSON output (docs/benchmarks.md)
    assert {k: s.trainer for k, s in benchmark_schemes().items()} == {
        "DSL": "nnUNetTrainerMTMD_DSL", "DSL_MSC": "nnUNetTrainerMTMD_DSL_MSC", "MTMD": "nnUNetTrainerMTMD"}


@pytest.mark.parametrize("query, expected", [("DSL_MSC", "DSL_MSC"), ("nnUNetTrainerMTMD", "DSL_MSC_MJAP"),
                                             ("nnUNetTrainerMTMD_Shared", "Shared")])
def test_get_scheme_by_name_or_trainer(query, expected):
    assert get_scheme(query).name == expected


@pytest.mark.parametrize("query, suggestion", [("DSL_MCS", "DSL_MSC"), ("Shard", "Shared"),
                                               ("nnUNetTrainerMTMD_DLS", "nnUNetTrainerMTMD_DSL")])
def test_get_scheme_suggests_the_closest(query, suggestion):
    with pytest.raises(InputDataError, match=rf"Unknown scheme '{query}'.*Did you mean '{suggestion}'\?"):
        get_scheme(query)


def test_docs_table_is_the_generated_one():
    text = (REPO / "docs" / "method.md").read_text()
    m = re.search(r"<!-- BEGIN schemes table[^>]*-->\n(.*?)\n<!-- END schemes table -->", text, re.S)
    assert m, "docs/method.md lost its generated scheme table"
    assert m.group(1) == markdown_table()
    assert markdown_table().count("\n") == len(SCHEMES) + 1


def test_replicates():
    from nnunetv2_mtmd.apps.study.constants import REPLICATES
    from nnunetv2_mtmd.schemes import replicates

    assert replicates() == REPLICATES == {"DSL_seed2": "DSL"}
    assert all(r in BY_NAME and ref in BY_NAME for r, ref in replicates().items())
