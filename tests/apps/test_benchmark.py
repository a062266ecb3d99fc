"""Tests of ``nnunetv2_mtmd.apps.benchmark`` and the ``nnUNetv2_mtmd_benchmark`` console script."""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from nnunetv2_mtmd.apps import benchmark as B
from nnunetv2_mtmd.domains import DomainSpec
from nnunetv2_mtmd.errors import InputDataError
from nnunetv2_mtmd.planning.planners import to_multi_domain_architecture
from tests.conftest import venv_bin

# The 2D architecture entry nnU-Net 2.8.1's ExperimentPlanner writes for a 64 x 64 patch.
STOCK_ARCH_2D = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 5,
        "features_per_stage": [32, 64, 128, 256, 512],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 5,
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


# ----------------------------------------------------------------------------- scheduling, stats
def test_interleaved_order_rotates_start_and_marks_warmup():
    order = B.interleaved_order(["A", "B", "C"], repeats=2, warmup=1)
    assert order == [
        ("A", True), ("B", True), ("C", True),
        ("B", False), ("C", False), ("A", False),
        ("C", False), ("A", False), ("B", False),
    ]


@pytest.mark.parametrize("names,repeats,warmup,expected_len", [(["A"], 3, 0, 3), (["A", "B"], 2, 2, 8)])
def test_interleaved_order_counts(names, repeats, warmup, expected_len):
    order = B.interleaved_order(names, repeats, warmup)
    assert len(order) == expected_len
    for n in names:
        assert sum(1 for m, w in order if m == n and not w) == repeats
        assert sum(1 for m, w in order if m == n and w) == warmup


def test_run_interleaved_keeps_only_timed_runs_in_call_order():
    calls = []

    def make(name):
        def fn():
            calls.append(name)
            return {"wall": float(len(calls)), "cpu": 0.5 * len(calls)}
        return fn

    times = B.run_interleaved({"A": make("A"), "B": make("B")}, repeats=2, warmup=1)
    assert calls == ["A", "B", "B", "A", "A", "B"]
    # timed calls: #3 B, #4 A, #5 A, #6 B
    assert [t["wall"] for t in times["A"]] == [4.0, 5.0]
    assert [t["wall"] for t in times["B"]] == [3.0, 6.0]
    assert B.clock_medians(times, "wall") == {"A": 4.5, "B": 4.5}
    assert B.clock_medians(times, "cpu") == {"A": 2.25, "B": 2.25}


def test_run_interleaved_single_warmup_runs_come_first():
    calls = []
    fns = {n: (lambda n=n: calls.append(n) or {"wall": 1.0, "cpu": 1.0}) for n in ("A", "B")}
    times = B.run_interleaved(fns, repeats=1, warmup=0, warmup_runs=3)
    assert calls == ["A", "B", "A", "A", "B"]
    assert {k: len(v) for k, v in times.items()} == {"A": 1, "B": 1}


def test_paired_ratio_is_median_of_per_round_ratios():
    times = {"A": [{"cpu": 2.0}, {"cpu": 6.0}, {"cpu": 3.0}], "S": [{"cpu": 1.0}, {"cpu": 4.0}, {"cpu": 3.0}]}
    # per-round ratios 2.0, 1.5, 1.0 -> median 1.5 (the ratio of medians would be 3 / 3 = 1.0)
    assert B.paired_ratio(times, "A", "S", "cpu") == 1.5
    assert B.paired_ratio(times, "S", "S", "cpu") == 1.0


@pytest.mark.parametrize("values,expected", [([3, 1, 2], 2.0), ([4, 1, 3, 2], 2.5), ([7], 7.0)])
def test_median(values, expected):
    assert B.median(values) == expected


def test_median_of_nothing_raises():
    with pytest.raises(ValueError):
        B.median([])


def test_ratio():
    assert B.ratio(3.0, 2.0) == 1.5
    assert math.isnan(B.ratio(1.0, 0.0))


# ----------------------------------------------------------------------------- plans conversion
def _spec():
    return B.k_domain_spec(3, 9)


def test_stock_architecture_inverts_the_planner_conversion():
    mtmd = to_multi_domain_architecture(STOCK_ARCH_2D, _spec())
    assert mtmd["arch_kwargs"]["norm_op"].endswith("DomainSpecificBatchNorm2d")  # precondition
    back = B.stock_architecture(mtmd)
    assert back["network_class_name"] == STOCK_ARCH_2D["network_class_name"]
    assert back["arch_kwargs"] == STOCK_ARCH_2D["arch_kwargs"]
    assert list(back["_kw_requires_import"]) == STOCK_ARCH_2D["_kw_requires_import"]


def test_stock_architecture_of_3d_and_resenc():
    arch = {
        "network_class_name": "nnunetv2_mtmd.architectures.unet.MultiDomainResEncUNet",
        "arch_kwargs": {"conv_op": "torch.nn.modules.conv.Conv3d", "norm_op": "x.DomainSpecificBatchNorm3d",
                        "norm_op_kwargs": {"num_domains": 2}, "domain_label_ids": [[1], [2]],
                        "head_mode": "domain", "n_stages": 4},
        "_kw_requires_import": ("conv_op", "norm_op"),
    }
    out = B.stock_architecture(arch)
    assert out == {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {"conv_op": "torch.nn.modules.conv.Conv3d",
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "n_stages": 4},
        "_kw_requires_import": ["conv_op", "norm_op"],
    }


def test_stock_architecture_rejects_a_stock_entry():
    with pytest.raises(InputDataError, match="nnUNetPlannerMTMD"):
        B.stock_architecture(STOCK_ARCH_2D)


def test_stock_plans_changes_only_architecture_and_name():
    plans = {"plans_name": "nnUNetPlans", "dataset_name": "Dataset960_X",
             "configurations": {"2d": {"batch_size": 6, "patch_size": [64, 64],
                                       "architecture": to_multi_domain_architecture(STOCK_ARCH_2D, _spec())},
                                "3d_cascade": {"inherits_from": "3d_fullres"}}}
    before = json.dumps(plans, sort_keys=True)
    out = B.stock_plans(plans, "StockX")
    assert json.dumps(plans, sort_keys=True) == before  # input untouched
    assert out["plans_name"] == "StockX"
    assert out["dataset_name"] == "Dataset960_X"
    assert out["configurations"]["2d"]["batch_size"] == 6
    assert out["configurations"]["2d"]["patch_size"] == [64, 64]
    assert out["configurations"]["2d"]["architecture"]["arch_kwargs"] == STOCK_ARCH_2D["arch_kwargs"]
    assert out["configurations"]["3d_cascade"] == {"inherits_from": "3d_fullres"}


# ------------------------------------------------------------------------------ K-domain specs
@pytest.mark.parametrize("k,labels,expected", [
    (2, 10, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]),
    (5, 10, [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]),
    (10, 10, [[i] for i in range(1, 11)]),
])
def test_k_domain_spec(k, labels, expected):
    spec = B.k_domain_spec(k, labels)
    assert spec.num_domains == k
    assert spec.domain_label_ids == expected
    assert spec.num_classes == labels + 1
    # a valid merged dataset.json
    dj = B.dataset_json_for_spec(spec, ["MRI"])
    assert dj["channel_names"] == {"0": "MRI", "1": "noNorm"}
    assert DomainSpec.from_dataset_json(dj) == spec


def test_k_domain_spec_needs_even_split():
    with pytest.raises(ValueError):
        B.k_domain_spec(3, 10)


# ------------------------------------------------------------------------------- batch helpers
def test_center_crop_or_pad():
    arr = np.arange(20, dtype=float).reshape(1, 5, 4)
    out = B.center_crop_or_pad(arr, (3, 6), pad_value=-1)
    # rows 1..3 (crop 5 -> 3, start 1), columns padded 1 left and 1 right
    expected = np.array([[[-1, 4, 5, 6, 7, -1], [-1, 8, 9, 10, 11, -1], [-1, 12, 13, 14, 15, -1]]], dtype=float)
    np.testing.assert_array_equal(out, expected)
    assert B.center_crop_or_pad(arr, (5, 4)) is arr


def test_deep_supervision_targets_nearest_exact():
    seg = torch.arange(16, dtype=torch.int16).reshape(1, 1, 4, 4)
    out = B.deep_supervision_targets(seg, [[1.0, 1.0], [0.5, 0.5], [0.25, 0.25]])
    assert out[0] is seg
    # nearest-exact: output i reads input floor((i + 0.5) * 2) -> rows/cols 1, 3; at 1/4: index 2
    assert out[1].tolist() == [[[[5, 7], [13, 15]]]]
    assert out[2].tolist() == [[[[10]]]]
    assert all(t.dtype == torch.int16 for t in out)
    assert B.deep_supervision_targets(seg, None) is seg


def test_random_batch_is_domain_balanced():
    spec = B.k_domain_spec(5, 10)
    b = B.random_batch(spec, 10, (16, 16), [[1, 1], [0.5, 0.5]], "cpu", seed=3)
    assert b["data"].shape == (10, 2, 16, 16)
    codes = b["data"][:, -1].flatten(1)
    assert torch.equal(codes.amin(1), codes.amax(1))  # constant code images
    assert codes[:, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [t.shape for t in b["target"]] == [(10, 1, 16, 16), (10, 1, 8, 8)]
    for i in range(10):  # every sample's labels belong to its own domain
        allowed = {0, *spec.domains[i // 2].unified_ids}
        assert set(b["target"][0][i].unique().tolist()) <= allowed
    again = B.random_batch(spec, 10, (16, 16), [[1, 1], [0.5, 0.5]], "cpu", seed=3)
    assert torch.equal(again["data"], b["data"]) and torch.equal(again["target"][0], b["target"][0])


# ---------------------------------------------------------------------------------- memory
EVENTS = [(0, 1, 100), (1, 2, 50), (2, 1, -100), (3, 3, 30), (4, 99, -1000), (5, 3, -30), (6, 2, -50)]


@pytest.mark.parametrize("start,end,expected", [
    (2, 6, 150),  # 150 live when the window opens (before the release at t=2)
    (3, 6, 80),   # 50 at t=3's opening, then +30; the release of unknown block 99 is ignored
    (5, 6, 80),
    (0, 0, 100),
    (10, 20, 0),  # window after everything: nothing live
])
def test_peak_live_bytes(start, end, expected):
    assert B.peak_live_bytes(EVENTS, start, end) == expected


class _FakeTrainer:
    """train_step allocates a 4000-byte temporary and replaces a 400-byte tensor kept between steps."""

    def __init__(self):
        self.network = torch.nn.Linear(2, 2)  # 6 float32 parameters: 24 bytes
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=0.1)  # no state
        self.keep = None

    def train_step(self, batch):
        tmp = torch.ones(1000)  # 4000 bytes
        self.keep = torch.ones(100)  # 400 bytes; the previous step's one is released after this
        del tmp


def test_measure_peak_memory_cpu_hand_computed():
    tr = _FakeTrainer()
    batch = {"data": torch.zeros(10), "target": [torch.zeros(5)]}  # 40 + 20 bytes
    m = B.measure_peak_memory(tr, batch, "cpu")
    assert m["resident"] == 24 + 40 + 20
    # step 2: 400 left by step 1, + 4000 temporary, + 400 new kept tensor before the old one is released
    assert m["working"] == 4800
    assert m["peak"] == 24 + 40 + 20 + 4800


# ------------------------------------------------------------------------------- result, table
def _good_result():
    return {"train_step_ratio": {"DSL": 1.0, "DSL_MSC": 1.02, "MTMD": 1.2}, "inference_ratio": 1.01,
            "memory_ratio": 1.05, "k_scaling_ratio": 1.0, "details": {}}


def test_check_result_accepts_good_result():
    assert B.check_result(_good_result()) == []


@pytest.mark.parametrize("mutate,fragment", [
    (lambda r: r.pop("memory_ratio"), "missing key 'memory_ratio'"),
    (lambda r: r.update(inference_ratio=float("nan")), "inference_ratio"),
    (lambda r: r.update(k_scaling_ratio=0.0), "k_scaling_ratio"),
    (lambda r: r["train_step_ratio"].pop("MTMD"), "train_step_ratio keys"),
])
def test_check_result_finds_problems(mutate, fragment):
    r = _good_result()
    mutate(r)
    problems = B.check_result(r)
    assert problems and any(fragment in p for p in problems)


def test_check_result_is_structural_only():
    # ratios far above any target are still a valid result: the targets live in docs/benchmarks.md
    r = _good_result()
    r["train_step_ratio"] = {"DSL": 3.0, "DSL_MSC": 3.0, "MTMD": 3.0}
    r.update(inference_ratio=2.0, memory_ratio=2.0, k_scaling_ratio=2.0)
    assert B.check_result(r) == []


def test_format_table_aligns_columns():
    text = B.format_table([["a", "1", "2", "0.500"], ["long name", "10", "20", "0.5"]])
    lines = text.splitlines()
    assert lines[0] == "measurement | MTMD | reference | ratio"
    assert set(lines[1]) <= {"-", "+"}
    assert lines[3].startswith("long name   | 10")
    assert len({line.index("|") for line in lines if "|" in line}) == 1


def _filled_result():
    s = {"stock": 0.5, "DSL": 0.52, "DSL_MSC": 0.55, "MTMD": 0.6}
    mem = {k: {"peak": int(v * 2**30), "resident": 1, "working": 2} for k, v in s.items()}
    return B.BenchmarkResult(
        train_step_s=s, train_step_ratio={"DSL": 1.04, "DSL_MSC": 1.1, "MTMD": 1.2},
        predict_s={"stock": 13.0, "MTMD": 12.0}, inference_ratio=0.923,
        predict_in_process_s={"stock": 4.0, "MTMD": 4.4}, inference_in_process_ratio=1.1,
        memory_bytes=mem, memory_ratio=1.2, memory_ratio_per_scheme={"DSL": 1.04, "DSL_MSC": 1.1, "MTMD": 1.2},
        k_step_s={2: 1.0, 5: 0.99, 10: 0.97}, k_scaling_ratio=0.97, clock="cpu",
        info={"device": "cpu", "total_s": 1.0})


def test_table_rows_show_measurements_and_ratios_without_targets():
    rows = B.table_rows(_filled_result())
    assert all(len(r) == len(B.TABLE_HEADER) == 4 for r in rows)
    by_name = {r[0]: r[1:] for r in rows}
    assert by_name["train step DSL (nnUNetTrainerMTMD_DSL)"] == ["520.0 ms", "500.0 ms stock", "1.040"]
    assert by_name["train step MTMD (nnUNetTrainerMTMD)"] == ["600.0 ms", "500.0 ms stock", "1.200"]
    assert by_name["nnUNetv2_predict (MTMD model)"] == ["12.00 s", "13.00 s stock", "0.923"]
    assert by_name["  same, in process (no start-up/imports; details)"] == ["4.40 s", "4.00 s stock", "1.100"]
    assert by_name["peak memory MTMD (reported)"] == ["614.4 MiB", "512.0 MiB stock", "1.200"]
    assert by_name["DSL step K=10 vs K=2 (K=2: 1.00 s, K=5: 990.0 ms, K=10: 970.0 ms)"] == [
        "970.0 ms", "1.00 s K=2", "0.970"]
    res = _filled_result()
    res.compiled = {"backend": "inductor", "graphs": {"stock": 1, "DSL": 1, "DSL_MSC": 2, "MTMD": 1},
                    "compile_s": {"stock": 50.0, "DSL": 61.4, "DSL_MSC": 70.0, "MTMD": 80.0},
                    "train_step_s": {"stock": 0.4, "DSL": 0.41, "DSL_MSC": 0.44, "MTMD": 0.5},
                    "train_step_ratio": {"DSL": 1.025, "DSL_MSC": 1.1, "MTMD": 1.25}}
    comp = {r[0]: r[1:] for r in B.table_rows(res)}
    assert comp["compiled train step DSL_MSC (2 graph(s), compile 70 s)"] == [
        "440.0 ms", "400.0 ms stock (1 graph(s))", "1.100"]
    assert res.to_json()["details"]["compiled"]["graphs"]["DSL_MSC"] == 2
    assert "compiled" not in _filled_result().to_json()["details"]
    text = B.format_table(rows)
    assert "pass" not in text and "FAIL" not in text and "<=" not in text
    assert "docs/benchmarks.md" in B.TABLE_FOOTER


def test_to_json_keys_and_write_json_is_atomic(tmp_path):
    out = _filled_result().to_json()
    assert set(out) == {*B.REQUIRED_KEYS, "details"}
    assert "targets" not in out["details"]
    assert out["details"]["k_step_median_s"] == {"2": 1.0, "5": 0.99, "10": 0.97}
    out["details"]["np"] = [np.int64(3), np.float32(0.5)]
    out["details"]["path"] = tmp_path
    path = tmp_path / "sub" / "bench.json"
    B.write_json(out, path)
    back = json.loads(path.read_text())
    assert back["details"]["np"] == [3, 0.5] and back["details"]["path"] == str(tmp_path)
    assert back["train_step_ratio"] == {"DSL": 1.04, "DSL_MSC": 1.1, "MTMD": 1.2}
    with pytest.raises(TypeError):  # an unserialisable value leaves the previous file untouched
        B.write_json({"x": object()}, path)
    assert json.loads(path.read_text()) == back
    assert sorted(p.name for p in path.parent.iterdir()) == ["bench.json"]


def test_benchmark_environment_sets_and_restores(tmp_path, monkeypatch):
    import nnunetv2.paths as paths  # imported before the block on purpose: nnU-Net must follow os.environ

    monkeypatch.setenv("nnUNet_raw", "/elsewhere/raw")
    monkeypatch.delenv("nnUNet_compile", raising=False)
    before = dict(os.environ)
    with B.benchmark_environment(tmp_path) as folders:
        assert folders == {f"nnUNet_{k}": str(tmp_path / f"nnUNet_{k}") for k in ("raw", "preprocessed", "results")}
        assert all(os.environ[k] == v and os.path.isdir(v) for k, v in folders.items())
        assert os.environ["nnUNet_compile"] == "f"
        assert {k: str(getattr(paths, k)) for k in folders} == folders
    assert dict(os.environ) == before
    assert str(paths.nnUNet_raw) == "/elsewhere/raw"
    with pytest.raises(RuntimeError, match="boom"), B.benchmark_environment(tmp_path):
        raise RuntimeError("boom")
    assert dict(os.environ) == before


def test_predict_env(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", "/somewhere")
    monkeypatch.setenv("nnUNet_compile", "t")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = B.predict_env(tmp_path, "cpu")
    assert env["nnUNet_results"] == str(tmp_path / "nnUNet_results") and env["nnUNet_compile"] == "f"
    assert "nnUNet_extTrainer" not in env and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in B.predict_env(tmp_path, "cuda")


def test_predict_command_uses_the_venv_script(tmp_path):
    cmd = B.predict_command("Dataset960_BenchJoints", "nnUNetTrainer", "nnUNetPlansStock", tmp_path / "in",
                            tmp_path / "out", "cpu", disable_tta=True)
    assert os.path.basename(cmd[0]) == "nnUNetv2_predict" and os.path.isabs(cmd[0])
    assert cmd[cmd.index("-p") + 1] == "nnUNetPlansStock" and cmd[-1] == "--disable_tta"


@pytest.mark.parametrize("kwargs,fragment", [
    ({"batch_size": 4}, "multiple of 3"),
    ({"k_batch_size": 6}, "multiples of every K"),
    ({"repeats": 0}, "--repeats"),
    ({"device": "tpu"}, "--device"),
    ({"clock": "sundial"}, "--clock"),
    ({"threads": 0}, "--threads"),
])
def test_settings_validation(kwargs, fragment):
    with pytest.raises(InputDataError, match=fragment):
        B.BenchmarkSettings(**kwargs).validate()


def test_effective_clock():
    assert B.BenchmarkSettings(device="cpu").effective_clock == "cpu"
    assert B.BenchmarkSettings(device="cuda").effective_clock == "wall"
    assert B.BenchmarkSettings(device="cpu", clock="wall").effective_clock == "wall"


# ------------------------------------------------------------------------------- end to end
def test_cli_refuses_nonempty_workdir(tmp_path):
    (tmp_path / "x").write_text("")
    proc = subprocess.run([venv_bin("nnUNetv2_mtmd_benchmark"), "--quick", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not empty" in proc.stderr


@pytest.mark.slow
def test_quick_benchmark_through_console_script(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env["OMP_NUM_THREADS"] = "1"
    # --compile with aot_eager (the graph capture and AOTAutograd of inductor, without its slow code
    # generation): every network, stock and multi-domain, compiles as one graph for the whole run
    proc = subprocess.run([venv_bin("nnUNetv2_mtmd_benchmark"), "--quick", "-device", "cpu", "--json", str(out),
                           "--workdir", str(tmp_path / "work"), "--compile", "--compile_backend", "aot_eager"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {*B.REQUIRED_KEYS, "details"}
    assert set(result["train_step_ratio"]) == {"DSL", "DSL_MSC", "MTMD"}
    ratios = [*result["train_step_ratio"].values(), result["inference_ratio"], result["memory_ratio"],
              result["k_scaling_ratio"]]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)
    details = result["details"]
    assert details["device"] == "cpu" and details["num_domains"] == 3
    assert set(details["train_step_median_s"]) == {"stock", "DSL", "DSL_MSC", "MTMD"}
    assert set(details["k_step_median_s"]) == {"2", "5", "10"}
    assert details["predict_cases"] == 3  # one test case per domain, predicted by the real nnUNetv2_predict
    # memory is deterministic: both peaks are at least the parameters + batch they hold
    mem = details["memory_bytes"]
    assert all(m["peak"] >= m["resident"] > 0 for m in mem.values())
    # one printed table with one row per measurement, then the footer pointing to the targets
    print(proc.stdout)
    for row in ("train step DSL ", "train step DSL_MSC", "train step MTMD", "nnUNetv2_predict", "peak memory MTMD",
                "K=10 vs K=2"):
        assert row in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("measurement"))
    assert [c.strip() for c in header.split("|")] == list(B.TABLE_HEADER)  # measured columns only
    assert B.TABLE_FOOTER in proc.stdout
    assert "targets" not in details
    comp = details["compiled"]
    assert comp["backend"] == "aot_eager"
    assert comp["graphs"] == {"stock": 1, "DSL": 1, "DSL_MSC": 1, "MTMD": 1}  # no graph break, no recompilation
    assert all(math.isfinite(r) and r > 0 for r in comp["train_step_ratio"].values())
    assert set(comp["compile_s"]) == {"stock", "DSL", "DSL_MSC", "MTMD"}
    assert "compiled train step MTMD (1 graph(s)" in proc.stdout
