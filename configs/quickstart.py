"""Quickstart: the whole pipeline on scikit-learn's digits, in about a minute on a 2-core laptop CPU.

Reproduces nothing from the paper; it shows the shape of a study. Three small CNN teachers (trained
together in one compiled step) are distilled into a smaller MLP with the paper's loss (tau 4,
alpha 0), and the table reports generalization (accuracy, NLL, ECE) next to fidelity (top-1 agreement
and KL to the ensemble) on the test set and in a clean pass over the train set.

  python run.py --config=configs/quickstart.py --workdir=runs/quickstart
"""

from kd_jax import config as kd_config


def get_config():
  config = kd_config.default_config()
  config.data.name = "digits"
  config.data.source = "digits"
  config.data.augment = "none"  # 8x8 digits are too small for crops and flips change their meaning

  config.teacher.model = kd_config.model_config(name="digits_cnn")
  config.teacher.ensemble_size = 3
  config.teacher.epochs = 30
  config.teacher.batch_size = 64
  config.teacher.optimizer = kd_config.optimizer_config(learning_rate=0.05, weight_decay=5e-4)

  config.student.model = kd_config.model_config(name="mlp", width=64)
  config.student.epochs = 40
  config.student.batch_size = 64
  config.student.optimizer = kd_config.optimizer_config(
      learning_rate=0.05, final_learning_rate=1e-6, nesterov=True, weight_decay=1e-4)

  config.distill.temperature = 4.0
  config.distill.alpha = 0.0
  config.eval_batch_size = 360
  config.log_every_steps = 200
  config.checkpoint_every_steps = 500
  return config
