"""course_utils.deploy and exercise_checks.check_onnx_export, against the real exporter and the real ONNX Runtime."""
import importlib.util
import re
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from course_utils import checks, deploy, exercise_checks

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def tiny_timm_net():
    """Conv2dSame (timm's TensorFlow "same" padding: F.pad computed from the input size), BatchNorm, 5 classes."""
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    net = nn.Sequential(Conv2dSame(3, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU6(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    net[1].running_mean.uniform_(-0.5, 0.5)  # BatchNorm statistics that matter in eval mode
    return net.eval()


@pytest.fixture(scope="module")
def exported(tiny_timm_net, tmp_path_factory):
    """The net exported with the dynamo exporter and a dynamic batch dimension (15 x 15: asymmetric padding)."""
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    program = torch.onnx.export(tiny_timm_net, (torch.randn(2, 3, 15, 15),), dynamo=True, verbose=False,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    assert deploy.save_onnx(program, path) == path
    assert [p.name for p in path.parent.iterdir()] == ["net.onnx"], "no temporary or external-data file is left"
    return path


def test_onnx_runtime_matches_pytorch_for_any_batch(tiny_timm_net, exported):
    session = deploy.onnx_session(exported, threads=1)
    assert session.get_inputs()[0].shape == ["batch", 3, 15, 15]
    for size in (1, 4):
        images = torch.randn(size, 3, 15, 15).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected = tiny_timm_net(images)
        torch.testing.assert_close(deploy.run_onnx(session, images), expected, atol=1e-5, rtol=1e-5)


def test_check_onnx_export_passes_a_good_export(tiny_timm_net, exported):
    exercise_checks.check_onnx_export(exported, tiny_timm_net, (3, 15, 15), batch_sizes=(1, 5))


def test_check_onnx_export_fails_with_its_own_messages(tiny_timm_net, exported, tmp_path):
    import onnx

    with pytest.raises(checks.CheckFailed, match="`onnx_path` is still None"):
        exercise_checks.check_onnx_export(None, tiny_timm_net, (3, 15, 15))
    with pytest.raises(checks.CheckFailed, match="no file there"):
        exercise_checks.check_onnx_export(tmp_path / "missing.onnx", tiny_timm_net, (3, 15, 15))
    static = onnx.load(str(exported))
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # what an export without dynamic_shapes gives
    onnx.save(static, str(tmp_path / "static.onnx"))
    with pytest.raises(checks.CheckFailed, match="batch dimension is fixed to 2"):
        exercise_checks.check_onnx_export(tmp_path / "static.onnx", tiny_timm_net, (3, 15, 15))
    other = nn.Sequential(*tiny_timm_net).eval()
    other_head = nn.Linear(6, 5)
    other[5] = other_head
    with pytest.raises(checks.CheckFailed, match="ONNX Runtime's output for a batch of 1` is off by"):
        exercise_checks.check_onnx_export(exported, other, (3, 15, 15))


@pytest.mark.parametrize("dynamo", [False, True])
def test_export_onnx_checks_parity_and_keeps_a_dynamic_batch(tiny_timm_net, tmp_path, dynamo):
    path = deploy.export_onnx(tiny_timm_net, torch.randn(2, 3, 15, 15), tmp_path / "net.onnx", dynamo=dynamo)
    session = deploy.onnx_session(path, threads=1)
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_outputs()[0].name == "output0"
    images = torch.randn(5, 3, 15, 15)
    with torch.no_grad():
        expected = tiny_timm_net(images)
    torch.testing.assert_close(deploy.run_onnx(session, images), expected, atol=1e-5, rtol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]


def test_a_fixed_batch_export_computes_no_shapes_and_takes_one_image(tiny_timm_net, tmp_path):
    import onnx
    import onnxruntime

    dynamic = deploy.export_onnx(tiny_timm_net, torch.randn(2, 3, 15, 15), tmp_path / "dynamic.onnx", dynamo=False)
    fixed = deploy.export_onnx(tiny_timm_net, torch.randn(1, 3, 15, 15), tmp_path / "fixed.onnx", dynamo=False,
                               fixed_batch=True)

    def ops_onnx_runtime_runs(path):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC  # constant folding
        options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimized.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}

    assert {"Shape", "Pad"} <= ops_onnx_runtime_runs(dynamic), "'same' padding computed from the input in every run"
    assert ops_onnx_runtime_runs(fixed).isdisjoint({"Shape", "Pad"}), "the padding folded into the convolution"
    assert deploy.onnx_session(fixed, threads=1).get_inputs()[0].shape == [1, 3, 15, 15]


def test_export_onnx_refuses_an_export_that_differs_from_pytorch(tiny_timm_net, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least 2 images"):
        deploy.export_onnx(tiny_timm_net, torch.randn(1, 3, 15, 15), tmp_path / "one.onnx", dynamo=False)
    real = deploy.run_onnx_outputs
    monkeypatch.setattr(deploy, "run_onnx_outputs", lambda session, x: tuple(o + 1e-2 for o in real(session, x)))
    message = r"differ from PyTorch's by \d\.\de-0\d \(relative\), more than the tolerance 0\.0001.*removed"
    with pytest.raises(ValueError, match=message):
        deploy.export_onnx(tiny_timm_net, torch.randn(2, 3, 15, 15), tmp_path / "net.onnx", dynamo=False)
    assert not list(tmp_path.iterdir())


def test_session_refuses_missing_files_and_bad_thread_counts(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="No ONNX model at .*nothing.onnx"):
        deploy.onnx_session(tmp_path / "nothing.onnx")
    with pytest.raises(ValueError, match="threads must be a positive integer .* got 0"):
        deploy.onnx_session(exported, threads=0)


def test_missing_packages_name_the_extra(monkeypatch):
    assert set(deploy.require_deploy_packages()) == {"onnx", "onnxruntime", "onnxscript"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=re.escape('onnxscript not installed. Install the deploy extra: '
                                                            'pip install "course-utils[deploy]"')):
        deploy.require_deploy_packages()


def test_time_runs_counts_warmup_apart_and_takes_the_median(monkeypatch):
    calls, clock = [], iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # runs of 1, 3 and 2 seconds
    cpu = iter([0.0, 0.5, 5.0, 7.0, 10.0, 10.25])  # 0.5, 2 and 0.25 CPU seconds
    monkeypatch.setattr(deploy.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(deploy.time, "process_time", lambda: next(cpu))
    timing = deploy.time_runs(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and timing.runs == (1.0, 3.0, 2.0) and timing.median == 2.0
    assert timing.cpu == (0.5, 2.0, 0.25) and timing.median_cpu == 0.5
    refusals = [({"repeats": 0}, "repeats must be a positive integer such as 5, got 0. It is how many timed"),
                ({"warmup": -1}, "warmup must be a non-negative integer such as 1, got -1. It is how many untimed"),
                ({"repeats": True}, "repeats must be a positive integer such as 5, got True.")]
    for bad, message in refusals:
        with pytest.raises(ValueError, match=re.escape(message)):
            deploy.time_runs(lambda: None, **bad)


def test_time_runs_measures_cpu_work_not_sleep():
    timing = deploy.time_runs(lambda: time.sleep(0.05), repeats=1, warmup=0)
    assert timing.runs[0] >= 0.05 and timing.cpu[0] < 0.04


def test_compare_latency_rows_and_table(monkeypatch):
    seen = []
    monkeypatch.setattr(deploy, "time_runs",
                        lambda fn, repeats, warmup: (fn(), deploy.Timing((0.5, 0.25, 0.4), (0.9, 0.5, 0.7)))[1])
    rows = deploy.compare_latency({"a": lambda x: seen.append(("a", len(x))), "b": lambda x: seen.append(("b", len(x)))},
                                  {1: torch.zeros(1, 3), 4: torch.zeros(4, 3)}, repeats=3)
    assert seen == [("a", 1), ("b", 1), ("a", 4), ("b", 4)]
    assert rows[3] == {"engine": "b", "batch": 4, "median_ms": 400.0, "runs_ms": [500.0, 250.0, 400.0],
                       "images_per_s": 10.0, "cpu_ms": 700.0}
    table = deploy.format_latency_table(rows).splitlines()
    assert len(table) == 6 and table[5] == "| b | 4 | 3 | 400.0 | 480.0 | 10.0 | 700.0 |"   # 90th pct: 400 + 0.8 * 100
    with pytest.raises(ValueError, match="batches\\[8\\] holds 4 images"):
        deploy.compare_latency({"a": len}, {8: torch.zeros(4, 3)})


def test_cpu_bf16_support_reports_what_the_machine_has():
    support = deploy.cpu_bf16_support()
    assert support["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(support["onednn_bf16"], bool)
    assert set(support["cpu_flags"]) <= {"avx512_bf16", "amx_bf16"}


def test_save_onnx_leaves_the_old_file_when_saving_fails(tmp_path):
    class Broken:
        def save(self, destination, external_data):
            Path(destination).write_bytes(b"half a model")
            raise OSError("disk full")

    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous model")
    with pytest.raises(OSError, match="disk full"):
        deploy.save_onnx(Broken(), target)
    assert target.read_bytes() == b"the previous model" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
