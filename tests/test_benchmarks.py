"""Tests for the benchmark harness (benchmarks/) and the performance-only changes it measured.

No test asserts anything about time: timings depend on the machine and its load. They check that the
harness runs the library's real step, reports what it promises, and computes its estimates right.
"""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import cases, estimate, harness, kd_step, measure, parts, side_by_side
from benchmarks import torch_reference
from kd_jax import parallel, runtime

REQUIRED_KEYS = ("backend", "device", "depth", "m", "batch", "precision", "compile_s", "step_ms",
                 "images_per_second")


@pytest.fixture(scope="module")
def tiny_record():
  case = cases.Case(kind="distill", depth=8, m=2, batch=8, classes=10, steps=2, warmup=1,
                      train_size=64)
  return measure.run_case(case)


def test_distill_record_has_the_promised_keys(tiny_record):
  assert set(REQUIRED_KEYS) <= set(tiny_record)
  assert set(measure.RECORD_KEYS) <= set(tiny_record)
  json.dumps(tiny_record)  # one JSON line per case


def test_distill_record_is_sane(tiny_record):
  record = tiny_record
  assert (record["depth"], record["m"], record["batch"], record["precision"]) == (8, 2, 8, "fp32")
  assert record["backend"] == jax.default_backend()
  assert record["method"] in ("vmap", "unroll", "scan")  # 'auto' is resolved
  # Exactly one compilation: the step compiled once and no timed step retraced.
  assert record["compiles"] == 1
  assert record["compile_s"] > 0 and record["step_ms"] > 0
  assert record["step_ms_min"] <= record["step_ms"]
  np.testing.assert_allclose(record["images_per_second"], 8 / (record["step_ms"] / 1e3), rtol=0.01)
  assert record["flops_per_step"] > 0 and record["compiled_memory_bytes"] > 0
  if record["peak_tflops"] is None:
    assert record["peak_fraction"] is None


def test_teacher_and_epoch_cases_run():
  common = dict(depth=8, batch=8, classes=10, steps=1, warmup=0, train_size=32)
  teacher = measure.run_case(cases.Case(kind="teacher", members=2, **common))
  assert teacher["members"] == 2 and teacher["compiles"] == 1
  np.testing.assert_allclose(teacher["images_per_second"], 16 / (teacher["step_ms"] / 1e3),
                             rtol=0.01)
  epoch = measure.run_case(cases.Case(kind="epoch", m=1, epoch_steps=2, **common))
  assert epoch["steps"] == 2 and epoch["steps_per_epoch"] == 4 and not epoch["full_epoch"]
  assert epoch["compiles"] == 1 and 0 < epoch["input_ms"]


def test_grid_is_every_combination_of_the_flags():
  args = kd_step.parse_args(["--depth", "20", "56", "--m", "1", "3", "--precision", "fp32", "bf16",
                             "--steps", "7"])
  grid_cases = kd_step.grid(args)
  assert len(grid_cases) == 8
  assert {(c.depth, c.m, c.precision) for c in grid_cases} == {
      (d, m, p) for d in (20, 56) for m in (1, 3) for p in ("fp32", "bf16")}
  assert all(c.steps == 7 and c.kind == "distill" for c in grid_cases)


def test_quick_and_full_cases_cover_every_kind():
  assert {c.kind for c in cases.quick_cases()} == set(cases.KINDS)
  full = cases.full_cases(steps=5, large_batch=1024)
  distill = [c for c in full if c.kind == "distill"]
  assert {(c.depth, c.m, c.batch, c.precision) for c in distill} == {
      (d, m, b, p) for d in (20, 56) for m in (1, 3, 5) for b in (128, 1024) for p in ("fp32", "bf16")}


def test_table_has_a_row_per_record(tiny_record):
  lines = measure.table([tiny_record, tiny_record]).splitlines()
  assert len(lines) == 4 and "distill" in lines[2]


def test_study_estimate_formula():
  study = estimate.Study(teachers=5, members_per_step=2, teacher_epochs=2, teacher_batch=100,
                        student_epochs=3, student_batch=50, train_size=1000)
  assert set(estimate.study_cases(study, steps=1, warmup=0)) == {"teacher_1", "teacher_2",
                                                                 "distill"}
  records = {"teacher_2": {"step_ms": 100.0, "compile_s": 10.0},
             "teacher_1": {"step_ms": 60.0, "compile_s": 8.0},
             "distill": {"step_ms": 40.0, "compile_s": 5.0}}
  result = estimate.estimate_study(study, records)
  # Groups of 2, 2, 1 teachers, 2 epochs x 10 steps each; student 3 epochs x 20 steps.
  assert result["teacher_steps_per_group"] == 20 and result["student_steps"] == 60
  assert result["teacher_train_s"] == pytest.approx(20 * (0.1 + 0.1 + 0.06))
  assert result["teacher_compile_s"] == pytest.approx(18.0)
  assert result["student_train_s"] == pytest.approx(60 * 0.04)
  assert result["total_s"] == pytest.approx(5.2 + 18.0 + 2.4 + 5.0)


def test_study_estimate_follows_the_librarys_plan():
  """The phases counted are those a run of the study's config plans (kd_jax's study plan)."""
  study = estimate.Study(teachers=3, members_per_step=2, teacher_epochs=1, teacher_batch=100,
                         student_epochs=2, student_batch=100, train_size=1000, test_size=100)
  plan = estimate.study_plan(study)
  assert [(p.name, p.steps) for p in plan.phases] == [
      ("teachers 1-2/3", 10), ("teachers 3-3/3", 10), ("student", 20), ("evaluation", 0)]
  config = estimate.study_config(study)
  assert (config.teacher.ensemble_size, config.teacher.members_per_step) == (3, 2)
  assert config.teacher.model.depth == config.student.model.depth == 56
  records = {"teacher_2": {"step_ms": 10.0, "compile_s": 1.0},
             "teacher_1": {"step_ms": 20.0, "compile_s": 1.0},
             "distill": {"step_ms": 30.0, "compile_s": 1.0}}
  result = estimate.estimate_study(study, records)
  assert result["teacher_train_s"] == pytest.approx(10 * 0.01 + 10 * 0.02)
  assert result["student_train_s"] == pytest.approx(20 * 0.03)


def test_other_busy_fraction():
  assert harness.other_busy_fraction(None, (1, 1, 1)) is None
  # 100 jiffies elapsed on the machine, 60 busy of which 40 were this process: 20% others.
  assert harness.other_busy_fraction((0, 0, 0), (60, 40, 100)) == pytest.approx(0.2)


@pytest.mark.skipif(not torch_reference.available(), reason="torch is not installed")
def test_torch_reference_runs_a_tiny_step():
  record = torch_reference.benchmark(depth=8, m=1, batch=4, classes=10, steps=1, warmup=0)
  assert record["images_per_second"] > 0 and record["depth"] == 8


def test_torch_reference_reports_a_skip_without_torch(monkeypatch, capsys):
  monkeypatch.setattr(torch_reference, "torch", None)
  torch_reference.main([])
  assert json.loads(capsys.readouterr().out) == {"skipped": "torch is not installed"}


# The performance-only library changes the harness measured must not change results.


def test_cpu_xla_flags_respect_the_user():
  defaults = runtime.CPU_XLA_FLAGS.get(jax.lib.__version__, ())
  environ = {}
  assert runtime.add_cpu_xla_flags(environ) == defaults
  assert runtime.add_cpu_xla_flags(environ) == ()  # already there: not added twice
  for flag in defaults:
    name = flag.split("=", 1)[0]
    assert runtime.add_cpu_xla_flags({"XLA_FLAGS": f"{name}=mine"}) == ()
  assert runtime.add_cpu_xla_flags({"KD_JAX_CPU_XLA_FLAGS": "0"}) == ()


def test_parts_conv_layers_time_each_stage(capsys):
  parts.main(["--conv-layers", "--batch", "2", "--repeats", "1"])
  records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  jax_records = [r for r in records if r["framework"] == "jax"]
  assert [(r["channels"], r["size"], r["part"]) for r in jax_records] == [
      (c, s, part) for c, s in parts.STAGE_CONVS
      for part in ("conv3x3_forward", "conv3x3_forward_backward")]
  assert all(0 < r["min_ms"] <= r["median_ms"] for r in jax_records)


# LeNet-5 cases and the side-by-side comparison with PyTorch.

LENET_TINY = dict(model="lenet5", classes=10, steps=1, warmup=0, train_size=32)


def test_lenet5_cases_run_the_library_steps():
  teacher = measure.run_case(cases.Case(kind="teacher", members=2, batch=8, **LENET_TINY))
  distill = measure.run_case(cases.Case(kind="distill", m=2, batch=8, **LENET_TINY))
  for record in (teacher, distill):
    assert record["model"] == "lenet5" and record["depth"] is None
    assert record["pooling"] == "avg" and record["max_pool"] is None and record["compiles"] == 1
  max_pooled = measure.run_case(cases.Case(kind="distill", m=1, batch=8, lenet_pooling="max",
                                             **LENET_TINY))
  assert max_pooled["pooling"] == "max" and max_pooled["max_pool"] == "kd_jax"
  np.testing.assert_allclose(teacher["images_per_second"], 16 / (teacher["step_ms"] / 1e3),
                             rtol=0.01)


def test_grid_uses_each_models_data_set():
  args = kd_step.parse_args(["--model", "lenet5", "preresnet", "--kind", "teacher"])
  sizes = {c.model: c.train_size for c in kd_step.grid(args)}
  assert sizes == {"lenet5": 60_000, "preresnet": 50_000}
  assert kd_step.parse_args([]).steps == 20 and kd_step.parse_args(["--side-by-side"]).steps == 10


def test_side_by_side_cases_are_the_documented_steps():
  lenet_cases = side_by_side.side_by_side_cases(["lenet5"], steps=3, warmup=1)
  assert [(c.kind, c.members, c.m, c.batch, c.classes, c.train_size, c.cached_logits)
          for c in lenet_cases] == [
      ("teacher", 3, 3, 256, 10, 60_000, False), ("distill", 1, 3, 128, 10, 60_000, False),
      ("distill", 1, 3, 128, 10, 60_000, True)]
  # PreResNet's distillation data is augmented: its teachers run in the step, no cached row.
  assert not any(c.cached_logits for c in side_by_side.side_by_side_cases(["preresnet"], 3, 1))


def _tiny_side_by_side():
  tiny = [cases.Case(kind="teacher", members=2, batch=4, **LENET_TINY),
          cases.Case(kind="distill", m=2, batch=4, **LENET_TINY),
          cases.Case(kind="distill", m=2, batch=4, cached_logits=True, **LENET_TINY)]
  records = side_by_side.side_by_side(tiny, rounds=2)
  assert [r["kind"] for r in records] == ["teacher", "distill", "cached"]
  for record in records:
    assert record["jax_compiles"] == 1 and record["jax_compiles_while_timed"] == 0
    assert len(record["jax_round_ms"]) == 2 and record["jax_step_ms"] > 0
  cached = records[2]
  assert cached["cache_s"] > 0 and "cache_s" not in records[1]
  np.testing.assert_allclose(
      cached["jax_step_ms_one_epoch"],
      cached["jax_step_ms"] + cached["cache_s"] * 1e3 / (LENET_TINY["train_size"] // 4),
      atol=0.1)  # (the record's values are rounded: ms to 0.01, cache_s to 0.001 s)
  assert len(side_by_side.side_by_side_table(records).splitlines()) == 5
  return records


def test_side_by_side_without_torch_fills_the_kd_jax_columns(monkeypatch):
  monkeypatch.setattr(torch_reference, "torch", None)
  for record in _tiny_side_by_side():
    assert record["torch_step_ms"] is None and record["ratio"] is None


@pytest.mark.skipif(not torch_reference.available(), reason="torch is not installed")
def test_side_by_side_with_torch():
  # The step times are rounded to 0.01 ms and a tiny step takes well under 1 ms: ratios recomputed from
  # them agree to a few percent.
  for record in _tiny_side_by_side():
    assert len(record["torch_round_ms"]) == 2
    np.testing.assert_allclose(record["ratio"], record["torch_step_ms"] / record["jax_step_ms"],
                               rtol=0.05)
    np.testing.assert_allclose(
        record["ratio"], record["jax_images_per_second"] / record["torch_images_per_second"],
        rtol=0.05)
    if record["kind"] == "cached":
      np.testing.assert_allclose(record["ratio_one_epoch"],
                                 record["torch_step_ms"] / record["jax_step_ms_one_epoch"], rtol=0.05)


@pytest.mark.skipif(not torch_reference.available(), reason="torch is not installed")
@pytest.mark.parametrize("pooling", torch_reference.POOLINGS)
def test_torch_lenet5_is_kd_jaxs(pooling):
  """Same parameter count and layer shapes (kd_jax HWIO / (in, out) vs PyTorch OIHW / (out, in))."""
  from kd_jax.models import LeNet5, param_count  # pylint: disable=import-outside-toplevel
  torch_net = torch_reference.LeNet5(10, pooling)
  params = LeNet5(num_classes=10).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  assert param_count(params) == sum(p.numel() for p in torch_net.parameters()) == 61_706
  torch_shapes = sorted(tuple(p.shape) for p in torch_net.parameters())
  jax_shapes = sorted(tuple(reversed(x.shape)) if x.ndim == 2 else
                      (x.shape[3], x.shape[2], x.shape[0], x.shape[1]) if x.ndim == 4 else x.shape
                      for x in jax.tree.leaves(params))
  assert torch_shapes == jax_shapes
  out = torch_net(torch_reference.torch.zeros(2, 1, 28, 28))
  assert tuple(out.shape) == (2, 10)


@pytest.mark.skipif(not torch_reference.available(), reason="torch is not installed")
def test_torch_reference_lenet5_steps_run():
  teacher = torch_reference.benchmark(m=1, batch=4, classes=10, steps=1, warmup=0, kind="teacher",
                                      model="lenet5", members=2)
  distill = torch_reference.benchmark(m=2, batch=4, classes=10, steps=1, warmup=0, model="lenet5",
                                      pooling="avg")
  assert teacher["members"] == 2 and distill["pooling"] == "avg" and distill["m"] == 2
  np.testing.assert_allclose(teacher["images_per_second"], 8 / (teacher["step_ms"] / 1e3), rtol=0.01)


@pytest.mark.parametrize("name,cin,cout,kernel,size,padding,unused", parts.SMALL_CONVS)
def test_small_conv_variants_compute_the_same_convolution(name, cin, cout, kernel, size, padding,
                                                          unused):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, cin))
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, cin, cout))
  want = np.asarray(nn.Conv(cout, (kernel, kernel), padding=padding, use_bias=False).apply(
      {"params": {"kernel": w}}, x))
  np.testing.assert_allclose(np.asarray(parts.conv_im2col(x, w, padding)), want, rtol=1e-4,
                             atol=1e-4)
  for layout, (_, _, out) in parts.LAYOUTS.items():
    got = parts.conv_in_layout(*parts.to_layout(x, w, layout), padding, layout)
    got = np.transpose(np.asarray(got), [out.index(d) for d in "NHWC"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=layout)


def test_sampling_mode_times_old_and_new_draws():
  records = parts.sampling(4, 1, sets=(("tiny", 64, (4, 4, 1)),))
  assert [r["method"] for r in records] == ["permutation", "sample_batch"]
  assert all(r["median_ms"] > 0 for r in records)


# The cases are built through the library's public API.


def test_case_configs_are_the_models_paper_configs():
  lenet = cases.Case(kind="distill", m=2, batch=8, **LENET_TINY)
  config = cases.case_config(lenet)
  assert config.data.augment == "none" and config.student.model.name == "lenet5"
  assert (config.teacher.ensemble_size, config.student.batch_size) == (2, 8)
  assert cases.caches_teacher_logits(lenet)
  preresnet = cases.Case(kind="teacher", depth=8, members=3, batch=16)
  config = cases.case_config(preresnet)
  assert config.data.augment == "crop_flip" and config.teacher.model.depth == 8
  assert config.teacher.ensemble_size == 3 and not cases.caches_teacher_logits(preresnet)
  with pytest.raises(ValueError, match="augmented"):
    cases.build(dataclasses.replace(preresnet, kind="distill", m=1, train_size=32,
                                    cached_logits=True),
                parallel.make_mesh(), cases.synthetic_data(32, 100, parallel.make_mesh()))


def test_max_pool_choice_is_lenet5s_max_pool_impl():
  common = dict(lenet_pooling="max", **LENET_TINY)
  assert cases.model(cases.Case(**common)).max_pool_impl == "reshape"
  assert cases.model(cases.Case(max_pool="flax", **common)).max_pool_impl == "reduce_window"
  with pytest.raises(ValueError, match="max_pool 'fast'"):
    cases.model(cases.Case(max_pool="fast", **common))
  args = kd_step.parse_args(["--model", "lenet5", "--lenet-pooling", "max", "--max-pool", "flax"])
  assert {c.max_pool for c in kd_step.grid(args)} == {"flax"}


def test_max_pool_choices_give_the_same_step():
  """One distillation step of LeNet-5 max-pooled either way: the same loss and metrics."""
  mesh = parallel.make_mesh()
  data = cases.synthetic_data(32, 10, mesh, (28, 28, 1))
  step_metrics = []
  for max_pool in cases.MAX_POOL_IMPLS:
    built = cases.build(cases.Case(kind="distill", m=2, batch=8, lenet_pooling="max",
                                   max_pool=max_pool, **LENET_TINY), mesh, data)
    _, values = built.step(*built.args)
    step_metrics.append(jax.device_get(values))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *step_metrics)


def test_cached_logits_table_is_the_ensembles_log_mean_softmax():
  """The table the cached-logits step reads, against the members' logits averaged in NumPy."""
  mesh = parallel.make_mesh()
  case = cases.Case(kind="distill", m=2, batch=8, cached_logits=True, **LENET_TINY)
  data = cases.synthetic_data(32, 10, mesh, (28, 28, 1))
  built = cases.build(case, mesh, data)
  assert built.cache_s > 0
  table = np.asarray(built.args[1])
  net = cases.model(case)
  config = cases.case_config(case)
  teachers = cases.stacked_states(net, cases.optimizer(config, "student", 32), 2, mesh, (28, 28, 1))
  images = np.asarray(data.train_images, np.float32) / 255.0
  x = (images - np.asarray(data.mean)) / np.asarray(data.std)
  member_logits = np.stack([
      np.asarray(net.apply({"params": jax.tree.map(lambda v: v[i], teachers.params)}, x))
      for i in range(2)]).astype(np.float64)
  log_probs = member_logits - np.log(np.sum(np.exp(member_logits), -1, keepdims=True))
  want = np.log(np.mean(np.exp(log_probs), axis=0))
  assert table.shape == (32, 10)
  np.testing.assert_allclose(table, want, rtol=1e-4, atol=1e-4)


def test_harness_timing_and_compile_counting():
  times = harness.call_seconds(lambda: None, 3)
  assert len(times) == 3 and all(t >= 0 for t in times)
  summary = harness.milliseconds([0.002, 0.001, 0.004])
  assert summary == {"median_ms": 2.0, "min_ms": 1.0}
  double, x = jax.jit(lambda x: 2 * x), jax.block_until_ready(jnp.ones(3))
  with harness.CompileCounter() as first:
    jax.block_until_ready(double(x))
  with harness.CompileCounter() as again:
    jax.block_until_ready(double(x))
  assert (first.count, again.count) == (1, 0)


def test_stream_step_rate_runs_the_streamed_distill_step():
  from benchmarks import stream  # pylint: disable=import-outside-toplevel
  assert stream.step_rate("mlp", crop=8, batch=4, steps=2) > 0


def test_bad_input_is_one_line_and_exit_status_2(monkeypatch, capsys):
  monkeypatch.setenv("KD_JAX_CPU_XLA_FLAGS", "0")  # leave this process's XLA_FLAGS alone
  with pytest.raises(SystemExit) as exit_info:
    kd_step.main(["--batch", "64", "--train-size", "32", "--depth", "8"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: --batch 64 exceeds the 32 synthetic training images (--train-size); lower it."]


def test_method_cases_are_runs_of_the_laptop_config():
  from configs.benchmark import laptop  # pylint: disable=import-outside-toplevel
  names = kd_step.method_names(kd_step.parse_args(["--methods"]).methods)
  assert names[0] == "kd" and "paper" not in names
  assert set(names) == set(cases.BENCHMARK_METHODS) and len(names) == len(set(names))
  crd, = cases.method_cases(["crd"], steps=1, warmup=0)
  assert (crd.batch, crd.train_size, crd.m, crd.classes) == (64, laptop.TRAIN_EXAMPLES, 1, 10)
  config = cases.case_config(crd)
  assert (config.teacher.model.name, config.student.model.name) == laptop.PAIRS[0]
  assert config.distill.method == "crd" and config.distill.method_options.nce_k == laptop.CRD_NEGATIVES


def test_methods_mode_times_each_methods_step_relative_to_kd(capsys):
  """--methods: one record per method of the laptop pair's fused step (kd first, whatever the
  order asked), each step time over kd's; then the table. One warm-up step first, so that the
  timed step takes the state the step itself returned: still one compilation."""
  kd_step.run(kd_step.parse_args(["--methods", "fitnet", "--steps", "1", "--warmup", "1",
                                  "--batch", "8"]))
  lines = capsys.readouterr().out.splitlines()
  records = [json.loads(line) for line in lines if line.startswith('{"backend"')]
  assert [r["distill_method"] for r in records] == ["kd", "fitnet"]
  for record in records:
    assert (record["teacher_model"], record["student_model"], record["batch"]) == (
        "resnet20", "resnet8", 8)
    assert record["compiles"] == 1 and record["step_ms"] > 0
    np.testing.assert_allclose(record["relative_to_kd"],
                               record["step_ms"] / records[0]["step_ms"], atol=0.006)
  assert records[0]["relative_to_kd"] == 1
  assert [line.split()[0] for line in lines[-2:]] == ["kd", "fitnet"]
