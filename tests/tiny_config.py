"""The tests' tiny digits study: small CNN teachers -> MLP student, seconds long. Tests import
`tiny_config` (through conftest.py too); tests that drive run.py itself pass this file as the config:

  python run.py --config=tests/tiny_config.py --workdir=/tmp/tiny
"""

from kd_jax import config as kd_config


def tiny_config(teacher_steps=12, student_steps=12, ensemble_size=2):
  """Seconds-long study on digits: small CNN teachers -> MLP student."""
  config = kd_config.default_config()
  config.data.name = "digits"
  config.data.source = "digits"
  config.data.augment = "none"
  config.teacher.model = kd_config.model_config(name="digits_cnn", width=8)
  config.teacher.ensemble_size = ensemble_size
  config.teacher.steps = teacher_steps
  config.teacher.batch_size = 32
  config.teacher.optimizer = kd_config.optimizer_config(learning_rate=0.05)
  config.student.model = kd_config.model_config(name="mlp", width=32)
  config.student.steps = student_steps
  config.student.batch_size = 32
  config.student.optimizer = kd_config.optimizer_config(
      learning_rate=0.05, final_learning_rate=1e-6, nesterov=True)
  config.eval_batch_size = 120
  config.evaluation.compression = False  # seconds per run; tests/test_compression.py runs it
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  return config


def get_config():
  return tiny_config()
