"""kd_jax/study/phases.py under faults: data whose classes cannot make a classification study."""

import numpy as np
import pytest

from kd_jax import KdJaxError
from kd_jax.study import phases


@pytest.mark.parametrize("num_classes", [0, 1])
def test_fewer_than_two_classes_are_refused(num_classes):
  with pytest.raises(KdJaxError, match="classification needs at least 2"):
    phases.check_classes(num_classes, np.zeros(5, np.int32), np.zeros(5, np.int32))
  with pytest.raises(KdJaxError, match="classification needs at least 2"):
    phases.check_classes(num_classes)


def test_classes_the_training_set_lacks_are_a_warning_with_the_accuracy_bound(capsys):
  phases.check_classes(3, np.array([0, 1, 0, 1], np.int32), np.array([0, 1, 2, 2], np.int32))
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err.splitlines() == [
      "warning: 1 of the 3 classes (labels 2) have test examples but no training examples; no "
      "model can learn them, so test accuracy is at most 50.00%"]
  phases.check_classes(3, np.array([0, 1, 2], np.int32), np.array([0, 0, 1], np.int32))
  assert capsys.readouterr().err == ""  # a class only in training is fine
