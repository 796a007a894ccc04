"""Every phase of one study, known before the first step, and an ETA for the whole study.

    plan = pipeline.study_plan(config, ...)   # teacher groups, student, evaluation, independent ...
    print(plan.describe())
    plan.remaining_seconds("teachers 1-2/3", step=40, images_per_second=900.0)

Phases run in the listed order, so every phase before the current one is done (trained now, or
found finished when a run resumes). The current phase's remaining images are timed at its measured
rate; a later phase at the rate last measured for its kind ('teachers' or 'student'), or, while none
was, at the current phase's rate: a rough estimate until each kind has run once (a distillation
step also runs the teachers' forward passes, so its images are slower than a teacher's). Evaluation
only runs forward passes, timed at EVALUATION_SPEEDUP times the current training rate.
"""

import dataclasses
from typing import List, Optional

# A forward pass costs about a third of a forward and backward pass (the backward pass about twice
# the forward), so evaluation processes images about 3x faster than training does.
EVALUATION_SPEEDUP = 3.0
KINDS = ("teachers", "student", "evaluation")


@dataclasses.dataclass
class PlannedPhase:
  """One phase of the study."""
  name: str  # as the loop's progress lines name it, e.g. "teachers 1-2/3"
  kind: str  # one of KINDS: phases of one kind process images at about one rate
  steps: int  # training steps (0 for evaluation)
  images: int  # images the phase processes: steps x images per step; evaluation: forward passes


@dataclasses.dataclass
class StudyPlan:
  """The study's phases in the order they run, and the images/s measured so far for each kind."""
  phases: List[PlannedPhase]
  rates: dict = dataclasses.field(default_factory=dict)

  def describe(self) -> str:
    """The plan as printed at the start of a run: one line per phase."""
    steps = sum(p.steps for p in self.phases)
    lines = [f"study plan: {len(self.phases)} phases, {steps:,} training steps"]
    for phase in self.phases:
      size = (f"{phase.steps:,} steps, {phase.images:,} images" if phase.steps
              else f"{phase.images:,} images (forward passes)")
      lines.append(f"  {phase.name:<30} {size}")
    return "\n".join(lines)

  def remaining_seconds(self, current: str, step: int, images_per_second: float
                        ) -> Optional[float]:
    """Seconds left in the study, with phase `current` at `step` running at `images_per_second`.

    None if `current` is not a phase of the plan or no rate has been measured yet.
    """
    names = [phase.name for phase in self.phases]
    if current not in names or images_per_second <= 0:
      return None
    index = names.index(current)
    phase = self.phases[index]
    self.rates[phase.kind] = images_per_second
    seconds = phase.images * max(phase.steps - step, 0) / phase.steps / images_per_second
    for later in self.phases[index + 1:]:
      if later.kind == "evaluation":
        rate = EVALUATION_SPEEDUP * images_per_second
      else:
        rate = self.rates.get(later.kind, images_per_second)
      seconds += later.images / rate
    return seconds
