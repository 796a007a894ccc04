"""The study plan (kd_jax/study_plan.py): its phases for a config, its ETA arithmetic, and the
study's ETA on the loop's progress lines."""

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from kd_jax import checkpoint, loop
from kd_jax.study_plan import EVALUATION_SPEEDUP, PlannedPhase, StudyPlan
from kd_jax.study import phases


def _plan_config():
  config = tiny_config(teacher_steps=12, ensemble_size=2)
  config.teacher.members_per_step = 1  # two teacher groups
  config.student.steps = 0
  config.student.epochs = 3  # 3 x (500 // 32) = 45 steps
  config.evaluation.independent_student = True
  return config


def test_plan_of_two_teacher_groups_and_an_independent_student():
  config = _plan_config()
  plan = phases.study_plan(config, teacher_examples=400, distill_examples=500,
                             labelled_examples=480, test_examples=100)
  teacher_images, student_images = 12 * 32, 45 * 32
  assert [(p.name, p.kind, p.steps, p.images) for p in plan.phases] == [
      ("teachers 1-1/2", "teachers", 12, teacher_images),
      ("teachers 2-2/2", "teachers", 12, teacher_images),
      ("student", "student", 45, student_images),
      ("evaluation", "evaluation", 0, 3 * (100 + 480)),
      ("independent teachers 1-1/2", "teachers", 12, teacher_images),
      ("independent teachers 2-2/2", "teachers", 12, teacher_images),
      ("independent student", "student", 45, student_images),
      # The tiny config caches the teachers' logits (no augmentation): 2 members x 500 images.
      ("independent evaluation", "evaluation", 0, 2 * 500 + 100),
  ]
  described = plan.describe()
  assert described.splitlines()[0] == "study plan: 8 phases, 138 training steps"
  assert "teachers 2-2/2" in described and "1,740 images (forward passes)" in described


def test_plan_without_teacher_training_when_teachers_are_loaded():
  config = _plan_config()
  config.teacher.load_from = "/somewhere"
  config.evaluation.independent_student = False
  plan = phases.study_plan(config, 400, 500, 480, 100)
  assert [p.name for p in plan.phases] == ["student", "evaluation"]


def test_remaining_seconds_times_later_phases_at_their_kinds_rates():
  plan = StudyPlan([PlannedPhase("teachers 1-1/2", "teachers", 10, 1000),
                    PlannedPhase("teachers 2-2/2", "teachers", 10, 1000),
                    PlannedPhase("student", "student", 20, 2000),
                    PlannedPhase("evaluation", "evaluation", 0, 600)])
  # 4 of 10 steps left (400 images) at 100 img/s; the second group at the same rate; the student,
  # never measured, at the current rate; evaluation at EVALUATION_SPEEDUP x the current rate.
  want = 400 / 100 + 1000 / 100 + 2000 / 100 + 600 / (EVALUATION_SPEEDUP * 100)
  assert plan.remaining_seconds("teachers 1-1/2", 6, 100.0) == pytest.approx(want)
  # In the student phase at 50 img/s, half done: the teachers' rate is no longer needed.
  assert plan.remaining_seconds("student", 10, 50.0) == pytest.approx(
      1000 / 50 + 600 / (EVALUATION_SPEEDUP * 50))
  assert plan.rates == {"teachers": 100.0, "student": 50.0}
  assert plan.remaining_seconds("not in the plan", 1, 10.0) is None
  assert plan.remaining_seconds("student", 1, 0.0) is None


def test_remaining_seconds_uses_the_measured_rate_of_a_later_phases_kind():
  plan = StudyPlan([PlannedPhase("teachers", "teachers", 10, 1000),
                    PlannedPhase("student", "student", 10, 1000),
                    PlannedPhase("independent teachers", "teachers", 10, 1000)])
  plan.rates["teachers"] = 200.0  # measured when the first teachers trained
  assert plan.remaining_seconds("student", 5, 50.0) == pytest.approx(500 / 50 + 1000 / 200)


class _Log:
  def write(self, record):
    pass


def test_progress_lines_show_the_study_eta(tmp_path, capsys):
  step = jax.jit(lambda state: ({"w": state["w"] + 1.0}, {"loss": jnp.float32(1.0)}))
  phase = loop.Phase(name="teachers 1-1/1", total=6, steps_per_epoch=3, images_per_step=4)
  plan = StudyPlan([PlannedPhase("teachers 1-1/1", "teachers", 6, 24),
                    PlannedPhase("student", "student", 100, 400)])
  manager = checkpoint.make_manager(str(tmp_path / "ckpt"))
  try:
    loop.fit(step, {"w": jnp.zeros((2,))}, phase=phase, manager=manager, start=0, log=_Log(),
             settings=loop.Settings(log_every=3, checkpoint_every=1000), study=plan)
  finally:
    manager.close()
  lines = [line for line in capsys.readouterr().out.splitlines() if "| ETA" in line]
  assert len(lines) == 2 and all("| study ETA " in line for line in lines)
  assert plan.rates["teachers"] > 0  # the loop reported its measured rate to the plan
