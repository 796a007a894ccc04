"""The paper's baseline study, estimated from measured steps: how long would it take on this device?

  study = Study()                                   # 5 PreResNet-56 teachers, then the student
  records = {name: run_case(case) for name, case in study_cases(study, steps=20, warmup=3).items()}
  estimate = estimate_study(study, records)         # {"total_minutes": ..., ...}

The study's phases (teacher groups, student) and their steps are the library's own plan of a run of
`study_config(study)` (`phases.study_plan`, what a run prints at its start), so the estimate
counts exactly the steps such a run would take.
"""

import dataclasses

import jax

from benchmarks import cases as cases_lib
from benchmarks import harness
from kd_jax import config as config_lib
from kd_jax.study import phases


@dataclasses.dataclass(frozen=True)
class Study:
  """5 PreResNet-56 teachers x 200 epochs, then the student 300 epochs against their ensemble."""
  depth: int = 56
  teachers: int = 5
  members_per_step: int = 5
  teacher_epochs: int = 200
  teacher_batch: int = 256
  student_epochs: int = 300
  student_batch: int = 128
  train_size: int = cases_lib.CIFAR_TRAIN_SIZE
  test_size: int = 10_000  # CIFAR's test set (its evaluation is not part of the estimate)
  classes: int = 100
  precision: str = "bf16"


def study_config(study: Study):
  """The config of the study's run: the library's defaults (the paper's CIFAR-100 recipe) with the
  study's models, ensemble, epochs, batches and precision."""
  config = config_lib.default_config()
  for phase, epochs, batch in ((config.teacher, study.teacher_epochs, study.teacher_batch),
                               (config.student, study.student_epochs, study.student_batch)):
    phase.model = config_lib.model_config(name="preresnet", depth=study.depth)
    phase.epochs, phase.steps, phase.batch_size = epochs, 0, batch
  config.teacher.ensemble_size = study.teachers
  config.teacher.members_per_step = study.members_per_step
  config.precision = study.precision
  return config


def study_plan(study: Study):
  """The library's plan of the study's run (teacher groups, student, evaluation)."""
  size = study.train_size
  return phases.study_plan(study_config(study), size, size, size, study.test_size)


def study_cases(study: Study, steps: int, warmup: int) -> dict:
  """The measurements the estimate needs: one per distinct teacher group size, the distill step."""
  sizes = {len(group) for group in phases.teacher_groups(study_config(study))}
  common = dict(depth=study.depth, classes=study.classes, precision=study.precision, steps=steps,
                warmup=warmup, train_size=study.train_size)
  cases = {f"teacher_{k}": cases_lib.Case(kind="teacher", members=k, batch=study.teacher_batch,
                                          **common)
           for k in sorted(sizes)}
  cases["distill"] = cases_lib.Case(kind="distill", m=study.teachers, batch=study.student_batch,
                                    **common)
  return cases


def estimate_study(study: Study, records: dict) -> dict:
  """Seconds of compute for the study: compile once per distinct program + steps x median step time.

    teachers = sum over the plan's teacher groups g of steps(g) x step_s(teacher, |g|)
               + compile_s(teacher, k) once per distinct group size k (the jit cache reuses it)
    student  = steps(student) x step_s(distill, m) + compile_s(distill, m)

  A group's size is its images per step over the teachers' batch (a plan phase's images are its
  steps x images per step). Evaluation (one clean pass over test and train sets), checkpointing
  and data loading are left out.
  """
  plan = study_plan(study)
  teacher_phases = [phase for phase in plan.phases if phase.kind == "teachers"]
  (student_phase,) = [phase for phase in plan.phases if phase.kind == "student"]
  teacher_s = 0.0
  for phase in teacher_phases:
    size = phase.images // (phase.steps * study.teacher_batch)
    teacher_s += phase.steps * records[f"teacher_{size}"]["step_ms"] / 1e3
  teacher_compile_s = sum(record["compile_s"] for name, record in records.items()
                          if name.startswith("teacher"))
  student_s = student_phase.steps * records["distill"]["step_ms"] / 1e3
  total = teacher_s + teacher_compile_s + student_s + records["distill"]["compile_s"]
  return {"study": dataclasses.asdict(study), "teacher_steps_per_group": teacher_phases[0].steps,
          # The paper's learning rates scaled linearly with the batch (0.1 at 256, 0.05 at 128).
          "teacher_learning_rate": 0.1 * study.teacher_batch / 256,
          "student_learning_rate": 0.05 * study.student_batch / 128,
          "student_steps": student_phase.steps, "teacher_train_s": round(teacher_s, 1),
          "teacher_compile_s": round(teacher_compile_s, 1), "student_train_s": round(student_s, 1),
          "student_compile_s": records["distill"]["compile_s"], "total_s": round(total, 1),
          "total_minutes": round(total / 60, 2), "backend": jax.default_backend(),
          "device": harness.device_name()}


def summary(estimate: dict) -> str:
  """The estimate in one line: total minutes and its parts."""
  return (f"estimated study time on {estimate['device']}: {estimate['total_minutes']:.1f} min "
          f"(teachers {estimate['teacher_train_s'] / 60:.1f} + student "
          f"{estimate['student_train_s'] / 60:.1f} + compile "
          f"{(estimate['teacher_compile_s'] + estimate['student_compile_s']) / 60:.1f})")
