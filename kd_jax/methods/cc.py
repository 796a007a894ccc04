"""CC: Peng et al. 2019, "Correlation Congruence for Knowledge Distillation" (ICCV), as RepDistiller
has it from the authors.

Both networks' pooled features pass through their own trainable linear embedding (to 128 dims), and
the loss compares consecutive examples of the batch: with delta_b = |W_s f_s,b + c_s - (W_t f_t,b +
c_t)| (elementwise),

  L = w_ce * CE(z_s, y) + w_feat * (1 / (B - 1)) sum_{b=1}^{B-1} sum_d delta_{b,d} delta_{b+1,d}.

The paper's correlation congruence compares B x B kernel correlation matrices of the embeddings
(a Taylor-expanded Gaussian RBF); the code the authors shared (RepDistiller
distiller_zoo/CC.py, `Correlation`) computes the product above, which this follows. The teacher's
embedding is trained too (RepDistiller puts both in its trainable list); the teacher's features get
no gradient. The loss depends on the order of the batch's rows.

Source: HobbitLong/RepDistiller, distiller_zoo/CC.py, models/util.py (LinearEmbed) and
train_student.py; CIFAR-100 defaults (scripts/run_cifar_distill.sh: --distill correlation -a 0 -b
0.02, feat_dim 128): CE weight 1, feature weight 0.02, embedding 128. mdistiller has no CC.

Features: the pooled (B, D) features that end student_features and teacher_features. Params:
{'student_embed': {'kernel' (D_s, 128), 'bias' (128,)}, 'teacher_embed': {'kernel' (D_t, 128),
'bias'}}, PyTorch's default Linear init. Teacher ensembles would need the members' pooled features
stacked (m, B, D) and an embedding per member or of their mean; check_ensemble refuses m > 1 for
now.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.methods import common
from kd_jax.methods.pkt import pooled_pair


def linear_embedding(dim, fan_in, name):
  """A Linear layer with PyTorch's default init (RepDistiller's LinearEmbed / CRD's Embed)."""
  init = common.torch_default_init(fan_in)
  return nn.Dense(dim, kernel_init=init, bias_init=init, name=name)


class PairEmbedding(nn.Module):
  """The student's and the teacher's linear embeddings of their (B, D) features."""
  dim: int

  @nn.compact
  def __call__(self, student, teacher):
    return (linear_embedding(self.dim, student.shape[-1], "student_embed")(student),
            linear_embedding(self.dim, teacher.shape[-1], "teacher_embed")(teacher))


@dataclasses.dataclass(frozen=True)
class CC:
  """Correlation congruence as RepDistiller's authors' code computes it (module docstring)."""
  name: ClassVar[str] = "cc"
  uses_features: ClassVar[bool] = True
  feature_kind: ClassVar[str] = "stages"

  embed_dim: int = 128
  ce_weight: float = 1.0
  feat_weight: float = 0.02

  from_config = classmethod(common.method_from_config)

  def init(self, rng, inputs):
    student, teacher = pooled_pair(self.name, inputs)
    return common.init_params(PairEmbedding(self.embed_dim), rng, student, teacher), {}

  def loss(self, params, state, inputs, rng):
    del rng
    student, teacher = pooled_pair(self.name, inputs)
    student, teacher = PairEmbedding(self.embed_dim).apply({"params": params}, student, teacher)
    delta = jnp.abs(student - teacher)
    feat = self.feat_weight * jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))
    return common.with_cross_entropy(self.ce_weight, inputs, feat, state)
