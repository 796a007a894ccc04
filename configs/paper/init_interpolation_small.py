"""Initialization interpolation at laptop scale (the experiment of configs/paper/init_interpolation.py,
Stanton et al. 2021 Fig. 6, sized for a 2-core CPU): LeNet-5 self-distillation on 10,000 Fashion-MNIST
images, the student starting at lambda * theta_teacher + (1 - lambda) * theta_random.

LeNet-5 (with the original code's average pooling, model.pooling = 'avg') has no BatchNorm, so, like
the paper's LayerNorm ResNet, the student's function does not depend on batch statistics. Expected direction (paper): train agreement near 100 % once lambda >= 0.5, clearly
lower from a random start (lambda = 0). Our measured table is in docs/experiments.md.

Reads the byte-exact Fashion-MNIST IDX files from ../shared/data/fashion-mnist (relative to the repo
root); point --config.data.path elsewhere, or use --config.data.source=tfds.

  python sweep.py --config=configs/paper/init_interpolation_small.py --workdir=runs/init_small --seeds=0
  python run.py --config=configs/paper/init_interpolation_small.py:lam0.5 --workdir=runs/init_small/lam0.5
"""

from configs.paper import init_interpolation, with_variant
from kd_jax import config as kd_config

OVERRIDES = init_interpolation.OVERRIDES
VARIANTS = init_interpolation.VARIANTS


def get_config(variant=None):
  config = kd_config.default_config()
  config.data = kd_config.data_config(name="fashion_mnist", source="idx",
                                      path="../shared/data/fashion-mnist", train_size=10000)
  config.data.augment = "none"
  config.data.split_seed = 0
  config.teacher.model = kd_config.model_config(name="lenet5")
  config.student.model = kd_config.model_config(name="lenet5")
  config.teacher.ensemble_size = 1
  config.teacher.epochs = 15
  config.teacher.batch_size = 128
  config.teacher.optimizer = kd_config.optimizer_config(learning_rate=0.05, weight_decay=5e-4)
  config.student.epochs = 15
  config.student.batch_size = 128
  # tau^2-scaled KD gradients are tau times the cross-entropy's: at lr 0.05 LeNet-5 students collapsed
  # to the uniform prediction, at 0.01 they train.
  config.student.optimizer = kd_config.optimizer_config(
      learning_rate=0.01, final_learning_rate=1e-6, nesterov=True, weight_decay=1e-4)
  config.distill.temperature = 4.0
  config.eval_batch_size = 1000
  config.log_every_steps = 200
  return with_variant(config, OVERRIDES, variant)
