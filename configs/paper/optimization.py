"""Optimizer and training length (Stanton et al. 2021, Fig. 5, section 6): self-distilled PreResNet-20
(LayerNorm) students trained 300, 1k and 5k epochs with SGD (Nesterov, the paper's recipe) and Adam.

Paper: train agreement 78.9 % after 300 SGD epochs, 81.3 % after 1k, 83.4 % after 5k; Adam does a bit
worse. The paper does not list Adam's settings; adam_<epochs> follows the original code's Adam config
(lr 5e-2, weight decay 1e-4, cosine to eta_min 1e-6), adam_ours_<epochs> is our earlier choice (lr
1e-3, no weight decay, cosine to 0), kept as a variant.
Variants sgd_<e>, adam_<e>, adam_ours_<e> for e = 300, 1000, 5000. The 5k-epoch runs are long.

  python run.py --config=configs/paper/optimization.py:sgd_1000 --workdir=runs/optimization/sgd_1000
  python sweep.py --config=configs/paper/optimization.py --workdir=runs/optimization
"""

from configs.paper import self_distillation, with_variant

OVERRIDES = {}
for epochs in (300, 1000, 5000):
  OVERRIDES[f"sgd_{epochs}"] = {"student.epochs": epochs}
  OVERRIDES[f"adam_{epochs}"] = {
      "student.epochs": epochs, "student.optimizer.name": "adam",
      "student.optimizer.learning_rate": 5e-2, "student.optimizer.weight_decay": 1e-4,
      "student.optimizer.final_learning_rate": 1e-6}
  OVERRIDES[f"adam_ours_{epochs}"] = {
      "student.epochs": epochs, "student.optimizer.name": "adam",
      "student.optimizer.learning_rate": 1e-3, "student.optimizer.weight_decay": 0.0,
      "student.optimizer.final_learning_rate": 0.0}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  return with_variant(self_distillation.get_config(), OVERRIDES, variant)
