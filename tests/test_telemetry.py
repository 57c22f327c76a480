"""Telemetry: device-side reducers with hand-checkable values, one-transfer resolve, sinks."""
import json

import pytest
import torch

from gmpo.telemetry.collector import Reducer, StepMetrics, measure_peak_flops, quantiles
from gmpo.runs.files import truncate_jsonl
from gmpo.telemetry.sinks import JsonlSink, ProgressSink, SamplesWriter, TensorBoardSink, WandbSink, summary_line


def test_reducer_hand_values():
    r = Reducer()
    r.mean("m", torch.tensor(1.0), 1.0)
    r.mean("m", torch.tensor(4.0), 3.0)  # (1*1 + 4*3) / 4 = 3.25
    r.mean("w", torch.tensor(2.0), torch.tensor(2.0))
    r.mean("w", torch.tensor(5.0), torch.tensor(1.0))  # (4 + 5) / 3 = 3
    r.min("lo", torch.tensor([3.0, 2.0]))
    r.min("lo", torch.tensor(2.5))
    r.max("hi", torch.tensor([3.0, -1.0]))
    r.max("hi", torch.tensor(7.0))
    r.cat("x", torch.tensor([1.0, 2.0]))
    r.cat("x", torch.tensor([[3.0]]))
    out = {k: float(v) for k, v in r.results().items()}
    assert out == {"m": 3.25, "w": 3.0, "lo": 2.0, "hi": 7.0}
    assert r.samples("x").tolist() == [1.0, 2.0, 3.0]
    assert r.samples("missing") is None


def test_quantiles_linear_interpolation():
    x = torch.arange(101, dtype=torch.float32)  # 0..100
    q = quantiles(x, [0.01, 0.99])
    assert q.tolist() == pytest.approx([1.0, 99.0])


def test_step_metrics_resolve_merges_tensors_and_floats():
    sm = StepMetrics()
    sm.add("a", torch.tensor([2.5]))
    sm.add("b", torch.tensor(1, dtype=torch.int64))
    sm.update({"c": 0.25, "d": 3})
    out = sm.resolve()
    assert out == {"a": 2.5, "b": 1.0, "c": 0.25, "d": 3.0}
    assert all(isinstance(v, float) for v in out.values())


def test_jsonl_sink_flushes_each_record_and_truncate(tmp_path):
    p = tmp_path / "m.jsonl"
    s = JsonlSink(p)
    s.log(1, {"x": 1.5})
    assert json.loads(p.read_text()) == {"step": 1, "x": 1.5}  # readable before close
    s.log(2, {"x": float("nan")})
    s.log(3, {"x": 2.0})
    s.close()
    with open(p, "a") as f:
        f.write('{"step": 4, "x"')  # a torn line from a crash
    truncate_jsonl(p, 2)
    lines = p.read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_samples_writer_caps_per_step(tmp_path):
    w = SamplesWriter(tmp_path / "s.jsonl", per_step=2)
    w.write(1, [{"completion": "a"}, {"completion": "b"}, {"completion": "c"}])
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "completion": "a"}, {"step": 1, "completion": "b"}]
    assert SamplesWriter(tmp_path / "none.jsonl", per_step=0).sink is None


def test_tensorboard_sink_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = TensorBoardSink(tmp_path / "tb")
    s.log(1, {"reward/mean": 0.5})
    s.log(2, {"reward/mean": 0.75})
    s.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(RuntimeError, match="pip install wandb"):
        WandbSink("gmpo", tmp_path, {})


def test_summary_line_and_progress_without_bar(capsys):
    m = {"reward/mean": 0.5, "loss/value": -0.0123, "rollout/len_mean": 12.0, "perf/step_s": 3.25}
    line = summary_line(3, 10, m)
    assert line == "step 3/10 | reward 0.5 | loss -0.0123 | len 12 | s 3.25"
    p = ProgressSink(10, print_every=1, enabled=False)
    p.log(3, m)
    p.log(0, {"eval/accuracy": 0.25})
    out = capsys.readouterr().out
    assert line in out and "held-out accuracy 0.250" in out


def test_peak_flops_measured_once():
    a = measure_peak_flops("cpu", torch.float32)
    assert 1e8 < a < 1e14
    assert measure_peak_flops("cpu", torch.float32) == a  # cached
