"""Malformed domain blocks in dataset.json and plans (issue 7, item 3): every case gives a
:class:`DomainSpecError` whose message names the offending key.

Tables: ``BLOCK_CASES`` (the ``mtmd`` block itself), ``DATASET_JSON_CASES`` (the block against the
rest of dataset.json), ``PLANS_CASES`` (the plans' ``arch_kwargs`` against the block, as checked when
a trainer is created), ``LABEL_ID_CASES`` (the network's own check of ``domain_label_ids``) and
``NETWORK_CASES`` (other network kwargs).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from nnunetv2_mtmd.architectures.dsbn import DomainSpecificBatchNorm2d
from nnunetv2_mtmd.architectures.heads import validate_domain_label_ids
from nnunetv2_mtmd.architectures.unet import MultiDomainPlainConvUNet, decode_domain
from nnunetv2_mtmd.domains import DomainSpec, check_plans_architecture
from nnunetv2_mtmd.errors import DomainSpecError

W = "dataset.json['mtmd']"


def valid_block() -> dict:
    return {
        "format_version": 1,
        "code_channel": 1,
        "domains": [
            {"name": "ankle", "code": 1, "source_dataset": "Dataset901_A", "num_cases": 3, "num_test_cases": 0,
             "labels": {"talus": {"unified": 1, "original": 1}, "tibia": {"unified": 2, "original": 2}}},
            {"name": "knee", "code": 2, "source_dataset": "Dataset902_K", "num_cases": 2,
             "labels": {"femur": {"unified": 3, "original": 1}}},
        ],
    }


def valid_dataset_json() -> dict:
    return {"channel_names": {"0": "MRI", "1": "noNorm"},
            "labels": {"background": 0, "ankle_talus": 1, "ankle_tibia": 2, "knee_femur": 3},
            "numTraining": 5, "file_ending": ".nii.gz", "mtmd": valid_block()}


def _set(path, value):
    """Mutation setting ``block[path...] = value``; the sentinel DEL deletes the key."""
    def mutate(block):
        obj = block
        for p in path[:-1]:
            obj = obj[p]
        if value is DEL:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
        return block
    return mutate


DEL = object()
D0, D1 = ("domains", 0), ("domains", 1)
L0 = (*D0, "labels", "talus")

# (id, mutation of the block, substrings of the message: the key path and what is wrong)
BLOCK_CASES = [
    ("block-not-object", lambda b: [b], [W, "expected a JSON object, found list"]),
    ("missing-format-version", _set(("format_version",), DEL), [W, "missing key 'format_version'"]),
    ("format-version-str", _set(("format_version",), "1"), ["'format_version' must be int, found str"]),
    ("format-version-future", _set(("format_version",), 2), [f"{W}['format_version'] is 2"]),
    ("missing-code-channel", _set(("code_channel",), DEL), ["missing key 'code_channel'"]),
    ("code-channel-bool", _set(("code_channel",), True), ["'code_channel' must be int, found bool"]),
    ("code-channel-zero", _set(("code_channel",), 0), [f"{W}['code_channel'] is 0", ">= 1"]),
    ("missing-domains", _set(("domains",), DEL), ["missing key 'domains'"]),
    ("domains-object", _set(("domains",), {"ankle": {}}), ["'domains' must be list, found dict"]),
    ("domains-empty", _set(("domains",), []), [f"{W}['domains'] is empty"]),
    ("domain-not-object", _set(D0, "ankle"), [f"{W}['domains'][0]", "expected a JSON object, found str"]),
    ("missing-name", _set((*D0, "name"), DEL), [f"{W}['domains'][0]", "missing key 'name'"]),
    ("name-int", _set((*D0, "name"), 5), [f"{W}['domains'][0]", "'name' must be str, found int"]),
    ("name-path-traversal", _set((*D0, "name"), "../evil"), [f"{W}['domains'][0]['name']", "not a valid domain"]),
    ("name-absolute-path", _set((*D0, "name"), "/tmp/x"), [f"{W}['domains'][0]['name']", "not a valid domain"]),
    ("name-underscore", _set((*D0, "name"), "left_knee"), [f"{W}['domains'][0]['name']", "no '_'"]),
    ("name-duplicate", _set((*D1, "name"), "ankle"), [f"{W}['domains'][1]['name']", "used twice"]),
    ("missing-code", _set((*D0, "code"), DEL), [f"{W}['domains'][0]", "missing key 'code'"]),
    ("code-str", _set((*D0, "code"), "1"), [f"{W}['domains'][0]", "'code' must be int, found str"]),
    ("code-bool", _set((*D0, "code"), True), ["'code' must be int, found bool"]),
    ("code-zero", _set((*D0, "code"), 0), [f"{W}['domains'][0]['code'] is 0, expected 1"]),
    ("code-out-of-range", _set((*D1, "code"), 3), [f"{W}['domains'][1]['code'] is 3, expected 2"]),
    ("codes-swapped", lambda b: _set((*D1, "code"), 1)(_set((*D0, "code"), 2)(b)), ["['code'] is 2, expected 1"]),
    ("missing-source", _set((*D0, "source_dataset"), DEL), ["missing key 'source_dataset'"]),
    ("missing-num-cases", _set((*D0, "num_cases"), DEL), ["missing key 'num_cases'"]),
    ("num-cases-negative", _set((*D0, "num_cases"), -1), [f"{W}['domains'][0]", "non-negative"]),
    ("num-test-cases-str", _set((*D0, "num_test_cases"), "0"), [f"{W}['domains'][0]", "non-negative"]),
    ("missing-labels", _set((*D0, "labels"), DEL), ["missing key 'labels'"]),
    ("labels-list", _set((*D0, "labels"), [1, 2]), ["'labels' must be dict, found list"]),
    ("labels-empty", _set((*D0, "labels"), {}), [f"{W}['domains'][0]['labels'] is empty"]),
    ("label-not-object", _set(L0, 1), [f"{W}['domains'][0]['labels']['talus']", "expected a JSON object"]),
    ("label-missing-unified", _set((*L0, "unified"), DEL), ["['labels']['talus']", "missing key 'unified'"]),
    ("label-unified-str", _set((*L0, "unified"), "1"), ["['labels']['talus']", "'unified' must be int"]),
    ("label-unified-zero", _set((*L0, "unified"), 0), ["['labels']['talus']", "0 is background"]),
    ("label-original-zero", _set((*L0, "original"), 0), ["['labels']['talus']", "0 is background"]),
    ("labels-overlap-between-domains", _set((*D1, "labels", "femur", "unified"), 2),
     [f"{W}['domains'][1]['labels']['femur']['unified'] = 2", "ankle_tibia", "must not overlap"]),
    ("original-twice-in-domain", _set((*D0, "labels", "tibia", "original"), 1),
     ["['labels']['tibia']['original'] = 1", "appears twice in domain 'ankle'"]),
    ("unified-not-consecutive", _set((*D1, "labels", "femur", "unified"), 7), [W, "consecutive 1..3", "[1, 2, 7]"]),
]


@pytest.mark.parametrize("mutate,expected", [c[1:] for c in BLOCK_CASES], ids=[c[0] for c in BLOCK_CASES])
def test_malformed_block_names_the_key(mutate, expected):
    block = mutate(valid_block())
    with pytest.raises(DomainSpecError) as e:
        DomainSpec.from_json(block)
    for s in expected:
        assert s in str(e.value), f"{s!r} not in: {e.value}"


def test_valid_block_parses():
    spec = DomainSpec.from_dataset_json(valid_dataset_json())
    assert spec.domain_label_ids == [[1, 2], [3]] and spec.code_channel == 1


DATASET_JSON_CASES = [
    ("no-mtmd-block", lambda d: d.pop("mtmd") and d, ["has no 'mtmd' block", "nnUNetv2_mtmd_merge"]),
    ("no-channel-names", lambda d: d.pop("channel_names") and d, ["'channel_names'"]),
    ("code-channel-not-last", lambda d: d["channel_names"].update({"2": "noNorm"}) or d,
     ["['mtmd']['code_channel'] is 1", "3 channels", "last one (2)"]),
    ("code-channel-normalised", lambda d: d["channel_names"].update({"1": "MRI"}) or d,
     ["['channel_names']['1'] is 'MRI'", "'noNorm'"]),
    ("labels-disagree", lambda d: d["labels"].update({"knee_femur": 4}) or d, ["['labels'] does not match"]),
    ("no-labels", lambda d: d.pop("labels") and d, ["'labels'"]),
]


@pytest.mark.parametrize("mutate,expected", [c[1:] for c in DATASET_JSON_CASES],
                         ids=[c[0] for c in DATASET_JSON_CASES])
def test_block_against_dataset_json(mutate, expected):
    with pytest.raises(DomainSpecError) as e:
        DomainSpec.from_dataset_json(mutate(valid_dataset_json()))
    for s in expected:
        assert s in str(e.value), f"{s!r} not in: {e.value}"


@pytest.mark.parametrize("content,expected", [(None, "does not exist"), ("{not json", "is not valid JSON")])
def test_unreadable_dataset_json_names_the_file(tmp_path, content, expected):
    path = tmp_path / "dataset.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DomainSpecError, match=expected) as e:
        DomainSpec.from_dataset_json(path)
    assert str(path) in str(e.value)


PW = "plans['configurations']['2d']['architecture']['arch_kwargs']"
PLANS_CASES = [
    ("arch-kwargs-not-object", [], [PW, "expected a JSON object"]),
    ("missing-domain-label-ids", {}, [PW, "missing key 'domain_label_ids'"]),
    ("label-ids-wrong-type", {"domain_label_ids": [[1, "2"], [3]]}, [f"{PW}['domain_label_ids']", "list of lists"]),
    ("label-ids-flat", {"domain_label_ids": [1, 2, 3]}, [f"{PW}['domain_label_ids']", "list of lists"]),
    ("label-ids-other-dataset", {"domain_label_ids": [[1], [2, 3]]},
     [f"{PW}['domain_label_ids'] is [[1], [2, 3]]", "gives [[1, 2], [3]]", "another dataset"]),
    ("label-ids-overlap", {"domain_label_ids": [[1, 2], [2]]}, [f"{PW}['domain_label_ids']", "another dataset"]),
    ("num-domains-mismatch", {"domain_label_ids": [[1, 2], [3]], "norm_op_kwargs": {"num_domains": 3}},
     [f"{PW}['norm_op_kwargs']['num_domains'] is 3", "2 domains"]),
]


@pytest.mark.parametrize("kwargs,expected", [c[1:] for c in PLANS_CASES], ids=[c[0] for c in PLANS_CASES])
def test_plans_against_domain_block(kwargs, expected):
    spec = DomainSpec.from_dataset_json(valid_dataset_json())
    with pytest.raises(DomainSpecError) as e:
        check_plans_architecture(kwargs, spec, PW)
    for s in expected:
        assert s in str(e.value), f"{s!r} not in: {e.value}"


def test_plans_matching_the_block_pass():
    spec = DomainSpec.from_dataset_json(valid_dataset_json())
    check_plans_architecture({"domain_label_ids": [[1, 2], [3]], "norm_op_kwargs": {"num_domains": 2}}, spec, PW)


LABEL_ID_CASES = [
    ("not-a-list", 3, "expected a non-empty list"),
    ("empty", [], "expected a non-empty list"),
    ("domain-empty", [[1], []], "[1]: expected a non-empty list"),
    ("id-zero", [[0, 1]], "label ids must be integers >= 1, found 0"),
    ("id-bool", [[True]], "found True"),
    ("id-float", [[1.0]], "found 1.0"),
    ("overlap", [[1, 2], [2, 3]], "unified label id 2 is also used by domain 0"),
    ("not-consecutive", [[1], [3]], "must be 1..2, found [1, 3]"),
]


@pytest.mark.parametrize("ids,expected", [c[1:] for c in LABEL_ID_CASES], ids=[c[0] for c in LABEL_ID_CASES])
def test_network_label_ids_validation_names_the_key(ids, expected):
    with pytest.raises(DomainSpecError) as e:
        validate_domain_label_ids(ids, "arch_kwargs['domain_label_ids']")
    assert "arch_kwargs['domain_label_ids']" in str(e.value) and expected in str(e.value)


def _net(**over):
    kw = dict(input_channels=2, n_stages=2, features_per_stage=[4, 8], conv_op=torch.nn.Conv2d, kernel_sizes=3,
              strides=[1, 2], n_conv_per_stage=1, num_classes=4, n_conv_per_stage_decoder=1,
              domain_label_ids=[[1, 2], [3]], norm_op=DomainSpecificBatchNorm2d,
              norm_op_kwargs={"num_domains": 2})
    kw.update(over)
    return MultiDomainPlainConvUNet(**kw)


NETWORK_CASES = [
    ("num-classes-mismatch", dict(num_classes=5), DomainSpecError, "num_classes is 5"),
    ("num-domains-mismatch", dict(norm_op_kwargs={"num_domains": 3}), DomainSpecError,
     "norm_op_kwargs['num_domains'] is 3"),
    ("no-code-channel", dict(input_channels=1), ValueError, "input_channels is 1"),
    ("head-mode", dict(head_mode="perdomain"), ValueError, "head_mode must be one of"),
]


@pytest.mark.parametrize("over,exc,expected", [c[1:] for c in NETWORK_CASES], ids=[c[0] for c in NETWORK_CASES])
def test_network_kwargs_validation(over, exc, expected):
    with pytest.raises(exc, match=re.escape(expected)):
        _net(**over)


@pytest.mark.parametrize("codes,bad", [([1, 3], [3]), ([0, 1], [0]), ([2, -1], [-1])])
def test_network_refuses_codes_out_of_range(codes, bad):
    x = torch.zeros(2, 2, 4, 4)
    x[:, 1] = torch.tensor(codes, dtype=torch.float32).view(2, 1, 1)
    with pytest.raises(ValueError, match=re.escape(f"invalid domain code(s) {json.dumps(bad)}")):
        decode_domain(x, 2)


def test_table_sizes():
    assert len(BLOCK_CASES) >= 30 and len({c[0] for c in BLOCK_CASES}) == len(BLOCK_CASES)
    assert copy.deepcopy(valid_block()) == valid_block()
