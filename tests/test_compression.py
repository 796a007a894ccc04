"""What distillation saved (kd_jax/compression.py) and how results show it (kd_jax/results.py):
parameter counts against the variables, LeNet-5's FLOPs against a count by hand, latencies, the student /
ensemble ratios from given numbers, the switch, and the results table with and without the section.
"""

import math
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import compression, ensemble, study, results as results_lib
from kd_jax import config as kd_config
from kd_jax.models import build_model
from tiny_config import tiny_config


def _init(model, shape, seed=0):
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)), train=False)


def _leaf_count(tree):
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def test_parameters_and_bytes_are_the_variables_own():
  """A PreResNet (BatchNorm: its running statistics are inference bytes, not parameters), and a
  stacked ensemble of three, whose figures are the members' summed."""
  model = build_model(kd_config.model_config(name="preresnet", depth=8, width=4), 10)
  variables = _init(model, (8, 8, 1))
  figures = compression.footprint(lambda v, x: model.apply(v, x, train=False), variables, (8, 8, 1),
                                  batch_size=4, seconds=0.01)
  params, stats = _leaf_count(variables["params"]), _leaf_count(variables["batch_stats"])
  assert stats > 0 and figures["params"] == params
  assert figures["inference_bytes"] == 4 * (params + stats)  # float32

  stacked = ensemble.stack([_init(model, (8, 8, 1), seed) for seed in range(3)])
  teacher = build_model(kd_config.model_config(name="preresnet", depth=8, width=4), 10)
  student = build_model(kd_config.model_config(name="mlp", width=8), 10)
  student_variables = _init(student, (8, 8, 1))
  footprints = compression.study_footprints(teacher, stacked, student, student_variables, (8, 8, 1),
                                            batch_size=4, seconds=0.01)
  assert [m["params"] for m in footprints["teachers"]] == [params] * 3
  assert footprints["ensemble"]["params"] == 3 * params == _leaf_count(stacked["params"])
  assert footprints["ensemble"]["inference_bytes"] == 3 * figures["inference_bytes"]
  assert footprints["student"]["params"] == _leaf_count(student_variables["params"])
  # The ensemble runs its three members: about three times a member's FLOPs (and a softmax more).
  flops = footprints["ensemble"]["flops_per_image"] / footprints["teachers"][0]["flops_per_image"]
  assert 3.0 <= flops < 3.1


def _conv_taps(size, kernel, padding):
  """Kernel taps that meet the input, summed over the output positions of one axis of a stride-1
  convolution (padding 'SAME' or 'VALID')."""
  low = (kernel - 1) // 2 if padding == "SAME" else 0
  outputs = size if padding == "SAME" else size - kernel + 1
  return sum(sum(0 <= o - low + k < size for k in range(kernel)) for o in range(outputs))


def test_lenet5_flops_match_a_count_by_hand():
  """LeNet-5 on 28x28x1, 10 classes. The convention: 2 operations per multiply-add (2 x MACs). XLA
  counts the multiply-adds of a convolution over the taps that meet the input only (the zero padding
  of the 'SAME' first convolution is not computed), then one operation per element for each bias
  addition, ReLU and pooling window element (average pooling: 3 additions and a division per 2x2
  window; max pooling: 3 comparisons). With those rules the count is XLA:CPU's exactly (jax 0.10.2;
  checked to 0.1 %); it is 0.05 % (average pooling) and 0.24 % (max pooling) below the usual
  padding-included 2 x MACs (checked to 0.5 %)."""
  macs_with_padding = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
  conv1 = _conv_taps(28, 5, "SAME") ** 2 * 6  # 1 input channel
  conv2 = _conv_taps(14, 5, "VALID") ** 2 * 6 * 16
  macs = conv1 + conv2 + 400 * 120 + 120 * 84 + 84 * 10
  activations = 28 * 28 * 6 + 10 * 10 * 16 + 120 + 84  # after each conv / dense layer but the last
  biases = activations + 10
  for pooling, pool_ops in (("avg", 28 * 28 * 6 + 10 * 10 * 16),
                            ("max", 3 * (14 * 14 * 6 + 5 * 5 * 16))):
    model = build_model(kd_config.model_config(name="lenet5", pooling=pooling), 10)
    figures = compression.footprint(lambda v, x, m=model: m.apply(v, x, train=False),
                                    _init(model, (28, 28, 1)), (28, 28, 1), batch_size=2,
                                    seconds=0.01)
    if jax.default_backend() != "cpu" and figures["flops_per_image"] is None:
      pytest.skip("this backend reports no cost analysis")
    by_hand = 2 * macs + biases + activations + pool_ops
    assert figures["flops_per_image"] == pytest.approx(by_hand, rel=1e-3)
    assert figures["flops_per_image"] == pytest.approx(2 * macs_with_padding, rel=5e-3)
  assert figures["params"] == 61706  # the model docstring's count


def test_latencies_are_positive_finite_and_capped_by_time():
  model = build_model(kd_config.model_config(name="mlp", width=8), 10)
  figures = compression.footprint(lambda v, x: model.apply(v, x, train=False),
                                  _init(model, (8, 8, 1)), (8, 8, 1), batch_size=16, seconds=0.05)
  for suffix, batch in (("batch1", 1), ("eval_batch", 16)):
    latency = figures[f"latency_{suffix}_s"]
    assert 0 < latency < 1 and math.isfinite(latency)
    assert figures[f"throughput_{suffix}"] == pytest.approx(batch / latency)
  assert figures["eval_batch_size"] == 16
  assert figures["peak_memory_bytes"] is None or figures["peak_memory_bytes"] > 0

  calls = []

  def slow():
    calls.append(1)
    time.sleep(0.03)
    return jnp.zeros(())

  start = time.perf_counter()
  assert compression.median_call_seconds(slow, seconds=0.1) >= 0.03
  # warm-up + about 0.1 s of calls; the bound on the wall time is loose for a busy machine
  assert time.perf_counter() - start < 2.0 and 3 <= len(calls) <= 6
  calls.clear()
  compression.median_call_seconds(lambda: calls.append(1) or jnp.zeros(()), seconds=10,
                                  max_repeats=5)
  assert len(calls) == 6  # warm-up + the cap
  calls.clear()
  compression.median_call_seconds(slow, seconds=0.0)
  assert len(calls) == 2  # a call longer than the budget is timed once


@pytest.mark.parametrize("analysis,expected", [
    ({"flops": 12.0, "bytes accessed": 3.0}, 12.0), ([{"flops": 7.0}], 7.0), (None, None),
    ([], None),
    ({"bytes accessed": 3.0}, None), ({"flops": -1.0}, None), ({"flops": float("nan")}, None)])
def test_flops_where_reported(analysis, expected):
  compiled = types.SimpleNamespace(cost_analysis=lambda: analysis)
  assert compression.reported_flops(compiled) == expected


def test_missing_analyses_are_not_reported():
  def fails():
    raise NotImplementedError("no analysis on this backend")
  assert compression.reported_flops(types.SimpleNamespace(cost_analysis=fails)) is None
  assert compression.reported_peak_memory(types.SimpleNamespace(memory_analysis=fails)) is None
  no_analysis = types.SimpleNamespace(memory_analysis=lambda: None)
  assert compression.reported_peak_memory(no_analysis) is None


def _figures(params, flops, latency):
  return {"params": params, "inference_bytes": 4 * params, "flops_per_image": flops,
          "peak_memory_bytes": None, "eval_batch_size": 100, "latency_batch1_s": latency,
          "throughput_batch1": 1 / latency, "latency_eval_batch_s": 10 * latency,
          "throughput_eval_batch": 10 / latency}


_RESULTS = {
    "teachers": [{"test_accuracy": 0.9, "test_nll": 0.3}, {"test_accuracy": 0.8, "test_nll": 0.5}],
    "ensemble": {"test_accuracy": 0.95, "test_nll": 0.2},
    "student": {"test_accuracy": 0.76, "test_nll": 0.6, "test_agreement": 0.8, "test_kl": 0.1},
}
_FOOTPRINTS = {"teachers": [_figures(1000, 2e6, 0.002)] * 2,
               "ensemble": _figures(2000, None, 0.005),
               "student": _figures(100, 1e5, 0.001)}


def test_section_ratios_from_given_numbers():
  section = compression.compression_section(_FOOTPRINTS, _RESULTS)
  assert section["student"] == _FOOTPRINTS["student"]
  assert section["teachers"] == _FOOTPRINTS["teachers"]
  versus = section["student_vs_ensemble"]
  assert versus["params"] == pytest.approx(0.05)
  assert versus["inference_bytes"] == pytest.approx(0.05)
  assert versus["latency_batch1_s"] == pytest.approx(0.2)
  assert versus["latency_eval_batch_s"] == pytest.approx(0.2)
  assert versus["flops_per_image"] is None  # the ensemble's FLOPs were not reported
  assert versus["peak_memory_bytes"] is None
  assert versus["accuracy_kept"] == pytest.approx(0.8)  # 0.76 / 0.95
  assert versus["test_agreement"] == 0.8
  no_accuracy = compression.compression_section(_FOOTPRINTS, {"student": {}, "ensemble": {}})
  assert no_accuracy["student_vs_ensemble"]["accuracy_kept"] is None


def test_measured_only_when_switched_on_and_on_the_whole_test_set():
  config = kd_config.default_config()
  assert config.evaluation.compression and compression.enabled(config)
  config.evaluation.test_size = 100  # a smoke run
  assert not compression.enabled(config)
  config.evaluation.test_size = 0
  config.evaluation.compression = False
  assert not compression.enabled(config)
  # Off: nothing is measured (the models are not even looked at).
  assert compression.measure(config, None, None, None, None, (8, 8, 1), _RESULTS) is None

  config.evaluation.compression = True
  config.eval_batch_size = 8
  teacher = build_model(kd_config.model_config(name="digits_cnn", width=4), 10)
  student = build_model(kd_config.model_config(name="mlp", width=8), 10)
  stacked = ensemble.stack([_init(teacher, (8, 8, 1), seed) for seed in range(2)])
  student_variables = _init(student, (8, 8, 1))
  before = jax.tree.map(np.array, (stacked, student_variables))
  section = compression.measure(config, teacher, stacked, student, student_variables, (8, 8, 1),
                                _RESULTS)
  jax.tree.map(np.testing.assert_array_equal, before, (stacked, student_variables))
  assert len(section["teachers"]) == 2 and section["student"]["eval_batch_size"] == 8
  assert section["student_vs_ensemble"]["params"] == pytest.approx(
      section["student"]["params"] / section["ensemble"]["params"])


_TABLE_WITHOUT = """\
model           test acc %  test NLL  test ECE %  test agree %  test KL  train acc %  train agree %  train KL
--------------  ----------  --------  ----------  ------------  -------  -----------  -------------  --------
teacher 0            90.00    0.3000           -             -        -            -              -         -
teacher 1            80.00    0.5000           -             -        -            -              -         -
ensemble (m=2)       95.00    0.2000           -             -        -            -              -         -
student              76.00    0.6000           -         80.00   0.1000            -              -         -"""


def test_results_table_with_and_without_compression():
  assert results_lib.results_table(_RESULTS) == _TABLE_WITHOUT
  with_section = {**_RESULTS, "compression": compression.compression_section(_FOOTPRINTS, _RESULTS)}
  lines = results_lib.results_table(with_section).splitlines()
  assert lines[0].split()[-5:] == ["params", "MFLOPs/img", "latency", "b1", "ms"]
  assert lines[2].split()[-3:] == ["1.0k", "2", "2"]
  assert lines[5].split()[-3:] == ["0.1k", "0.1", "1"]
  assert lines[4].split()[-4:] == ["2.0k", "not", "reported", "5"]
  assert lines[-1] == ("student / ensemble: 0.05x parameters, ? FLOPs, 0.2x latency at batch 1, "
                       "0.2x at batch 100; kept 80.0% of the ensemble's test accuracy, 80.0% test "
                       "agreement")
  # The rows' metric cells are those of the table without the section.
  for plain, extended in zip(_TABLE_WITHOUT.splitlines()[2:], lines[2:6]):
    assert extended.startswith(plain.rstrip())


def test_flatten_results_carries_the_section():
  plain = results_lib.flatten_results(_RESULTS)
  flat = results_lib.flatten_results(
      {**_RESULTS, "compression": compression.compression_section(_FOOTPRINTS, _RESULTS)})
  assert {k: flat[k] for k in plain} == plain
  assert flat["student_params"] == 100 and flat["teacher1_latency_batch1_s"] == 0.002
  assert flat["ensemble_flops_per_image"] is None
  assert flat["student_vs_ensemble_accuracy_kept"] == pytest.approx(0.8)
  assert len(flat) == len(plain) + 4 * 9 + len(compression.RATIO_KEYS) + 2


@pytest.mark.e2e
def test_a_finished_run_reports_what_distillation_saved(tmp_path, capsys):
  config = tiny_config()
  config.evaluation.compression = True
  results = study.run(config, str(tmp_path / "run"))
  section = results["compression"]
  student = build_model(config.student.model, 10)
  variables = _init(student, (8, 8, 1))
  assert section["student"]["params"] == _leaf_count(variables["params"])
  teacher_params = section["teachers"][0]["params"]
  assert section["ensemble"]["params"] == config.teacher.ensemble_size * teacher_params
  assert section["student"]["flops_per_image"] > 0
  out = capsys.readouterr().out
  header = next(line for line in out.splitlines() if line.startswith("model "))
  assert "params" in header and "MFLOPs/img" in header  # the table's compression columns
