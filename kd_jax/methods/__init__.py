"""Distillation methods of the CIFAR-100 benchmark, each a frozen dataclass of its hyperparameters.

Every method has one duck-typed shape (`Method` documents it); `make_method(config)` builds one by
name. The methods and their modules (each module's docstring has the formula, the source and the
CIFAR-100 defaults):

  logits only:  kd (kd.py), dkd (dkd.py), dist (dist.py) -- these take logit_standardization
  stage maps:   fitnet (fitnet.py), at (at.py), sp (sp.py), vid (vid.py), nst (nst.py)
  pooled:       cc (cc.py), rkd (rkd.py), pkt (pkt.py), crd (crd.py, with a memory bank in `state`)
  pre-ReLU:     ofd (ofd.py), reviewkd (reviewkd.py)

kd_jax/methods/common.py fixes what the step passes in (`MethodInputs`, the feature conventions).
"""

from typing import Any, ClassVar, Protocol

from kd_jax.errors import KdJaxError
from kd_jax.methods.at import AT
from kd_jax.methods.cc import CC
from kd_jax.methods.common import MethodInputs, network_features
from kd_jax.methods.crd import CRD
from kd_jax.methods.dist import DIST
from kd_jax.methods.dkd import DKD
from kd_jax.methods.fitnet import FitNet
from kd_jax.methods.kd import KD
from kd_jax.methods.nst import NST
from kd_jax.methods.ofd import OFD
from kd_jax.methods.pkt import PKT
from kd_jax.methods.reviewkd import ReviewKD
from kd_jax.methods.rkd import RKD
from kd_jax.methods.sp import SP
from kd_jax.methods.vid import VID

__all__ = ["METHODS", "METHOD_CLASSES", "Method", "MethodInputs", "check_ensemble", "make_method",
           "network_features"]


class Method(Protocol):
  """What the fused step needs of a method (a frozen dataclass; hashable, so jit may close over it).

  name: the config name. uses_features: whether the step must run the networks' feature outputs.
  feature_kind: which MethodInputs features it reads:
    ''       -- none (logits and labels only);
    'stages' -- student_features and teacher_features (post-ReLU stage maps and/or the pooled
                feature, as each method's docstring says);
    'preact' -- student_preact_features and teacher_preact_features as well (OFD reads only those;
                ReviewKD also the student's stage maps and both pooled features).

  init(rng, inputs, **extra) -> (params, state): the method's own trainable parameters (a dict of
    arrays, {} if none; trained with the student, under the student's optimizer) and its
    non-trainable state ({} if none), shaped from an example `inputs`. Two methods take extra
    keyword arguments: OFD.init(..., teacher_bn_mean=, teacher_bn_std=) (the teacher's BN
    statistics behind its margins) and CRD.init(..., example_labels=) (the training set's labels,
    for negatives='other_class').
  loss(params, state, inputs, rng) -> (loss, new_state, metrics): the scalar to minimize (the
    method's CE and distillation terms, weighted as its reference does; CE over rows with label
    >= 0), the state for the next step, and a dict of scalars, always with 'ce' and 'distill' (the
    two weighted terms, loss = ce + distill). The teacher's inputs receive no gradient.
  Methods with warm-ups read inputs.step and their steps_per_epoch; CRD reads
  inputs.example_indices and draws its negatives from rng, and says so with the class attribute
  needs_example_indices = True (absent: False), so that a step without indices refuses it.
  """
  name: ClassVar[str]
  uses_features: ClassVar[bool]
  feature_kind: ClassVar[str]

  def init(self, rng, inputs: MethodInputs, **extra) -> tuple[Any, Any]:
    ...

  def loss(self, params, state, inputs: MethodInputs, rng) -> tuple[Any, Any, dict]:
    ...


METHOD_CLASSES = {cls.name: cls
                  for cls in (KD, DKD, DIST, FitNet, AT, SP, CC, VID, RKD, PKT, NST, CRD, OFD, ReviewKD)}
METHODS = {name: cls.from_config for name, cls in METHOD_CLASSES.items()}


def make_method(config) -> Method:
  """The method that `config` (a mapping with 'name' and any of that method's fields) names."""
  name = config.get("name")
  if name not in METHODS:
    raise KdJaxError(f"unknown distill method {name!r}; valid methods: {', '.join(METHODS)}.")
  return METHODS[name](config)


def check_ensemble(method: Method, num_members: int) -> None:
  """Raises KdJaxError for a feature method and an ensemble of more than one teacher.

  Logit methods read the ensemble's log-mean-probability logits. A feature method would need the
  members' features stacked on a leading member axis and a rule to combine them (each method's
  docstring says which), which none has yet; distilling member 0's features alone would silently
  change the method.
  """
  if method.uses_features and num_members > 1:
    raise KdJaxError(f"distill method {method.name!r} distils the features of one teacher; it has "
                     f"no rule for an ensemble of {num_members} (use teacher.ensemble_size=1 or a "
                     "logit method: kd, dkd, dist).")
