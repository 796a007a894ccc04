"""The model names of the CIFAR-100 distillation benchmark (CRD, RepDistiller, mdistiller), spelt as
mdistiller's `cifar_model_dict` spells them, and the kd_jax model each stands for.

Parameter counts at 100 classes (weights, biases, BatchNorm scales and shifts; no running
statistics), PyTorch's `sum(p.numel() for p in model.parameters())` for the reference definitions:

  resnet8       83,892    (RepDistiller's and mdistiller's smallest CIFAR ResNet; the laptop-scale
                          benchmark's student, configs/benchmark/laptop.py)
  resnet20     278,324    resnet8x4     1,233,540    wrn_16_2   703,284    vgg8   3,965,028
  resnet32     472,756    resnet32x4    7,433,860    wrn_40_1   569,780    vgg13  9,462,180
  resnet56     861,620    ResNet50     23,705,252    wrn_40_2 2,255,156
  resnet110  1,736,564    MobileNetV2     812,836    ShuffleV1  949,258    ShuffleV2  1,355,528

Every one takes 32x32 RGB images; call it with `features=True` for (logits, StageFeatures)
(kd_jax/models/cifar_layers.py; each model's docstring says what its stage features are).
`bn_before_relu` gives the BatchNorm before each stage's final ReLU (OFD's margins), as mdistiller's
`get_bn_before_relu`; the ShuffleNets have none (mdistiller refuses them as OFD teachers too).
"""

import functools
from typing import Any

import flax.linen as nn

from kd_jax.config import NO_BN_BEFORE_RELU  # no bn_before_relu (mdistiller's OFD refuses them too)
from kd_jax.errors import KdJaxError

from kd_jax.models.cifar_resnet import RESNET_FILTERS, RESNET_X4_FILTERS, CifarResNet, CifarResNet50
from kd_jax.models.cifar_vgg import VGG8_BLOCKS, VGG13_BLOCKS, CifarVGG
from kd_jax.models.mobilenetv2 import MobileNetV2
from kd_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from kd_jax.models.wrn import WideResNet

CIFAR_MODELS = {
    'resnet8': functools.partial(CifarResNet, depth=8, filters=RESNET_FILTERS),
    'resnet20': functools.partial(CifarResNet, depth=20, filters=RESNET_FILTERS),
    'resnet32': functools.partial(CifarResNet, depth=32, filters=RESNET_FILTERS),
    'resnet56': functools.partial(CifarResNet, depth=56, filters=RESNET_FILTERS),
    'resnet110': functools.partial(CifarResNet, depth=110, filters=RESNET_FILTERS),
    'resnet8x4': functools.partial(CifarResNet, depth=8, filters=RESNET_X4_FILTERS),
    'resnet32x4': functools.partial(CifarResNet, depth=32, filters=RESNET_X4_FILTERS),
    'wrn_16_2': functools.partial(WideResNet, depth=16, widen_factor=2),
    'wrn_40_1': functools.partial(WideResNet, depth=40, widen_factor=1),
    'wrn_40_2': functools.partial(WideResNet, depth=40, widen_factor=2),
    'vgg8': functools.partial(CifarVGG, blocks=VGG8_BLOCKS),
    'vgg13': functools.partial(CifarVGG, blocks=VGG13_BLOCKS),
    'MobileNetV2': functools.partial(MobileNetV2, expansion=6, width_multiplier=0.5),
    'ShuffleV1': ShuffleNetV1,
    'ShuffleV2': ShuffleNetV2,
    'ResNet50': CifarResNet50,
}
CIFAR_MODEL_NAMES = tuple(CIFAR_MODELS)


def cifar_model(name: str, num_classes: int, dtype: Any) -> nn.Module:
  """The benchmark model `name` (one of CIFAR_MODEL_NAMES) with `num_classes` outputs."""
  return CIFAR_MODELS[name](num_classes=num_classes, dtype=dtype)


def _last_block(params, prefix: str) -> str:
  """The name of the last module `{prefix}{i}` (largest i) in `params`."""
  blocks = [k for k in params if k.startswith(prefix) and k[len(prefix):].isdigit()]
  return max(blocks, key=lambda k: int(k[len(prefix):]))


def bn_before_relu(name: str, params) -> tuple:
  """(means, stds): per stage after the stem, the shift (beta) and scale (gamma) of the BatchNorm
  right before the stage's final ReLU in model `name`'s `params`, as mdistiller's
  get_bn_before_relu picks them: the last block's bn2 (CIFAR ResNets) or bn3 (ResNet50); the next
  stage's first bn1 and the head's bn1 (WRN); each block's last BatchNorm (VGG); the last
  BatchNorm of blocks 1, 2, 4, 6 (MobileNetV2)."""
  if name in NO_BN_BEFORE_RELU:
    raise KdJaxError(f'model {name!r} has no BatchNorm right before its stages\' ReLUs (OFD needs '
                     'one in the teacher); use another teacher for distill method ofd.')
  if name.startswith('resnet') or name == 'ResNet50':
    stages = sorted({k.split('_')[0] for k in params if k.startswith('layer')})
    leaf = 'bn3' if name == 'ResNet50' else 'bn2'
    norms = [params[_last_block(params, f'{stage}_')][leaf] for stage in stages]
  elif name.startswith('wrn'):
    norms = [params['block2_layer_0']['bn1'], params['block3_layer_0']['bn1'], params['bn1']]
  elif name.startswith('vgg'):
    stages = sorted({int(k[5:].split('_')[0]) for k in params if k.startswith('block')})[1:]
    norms = [params[_last_block(params, f'block{i}_')] for i in stages]
  elif name == 'MobileNetV2':
    norms = [params[_last_block(params, f'blocks_{i}_')]['conv_7'] for i in (1, 2, 4, 6)]
  else:
    raise KdJaxError(f'model {name!r} is not one of the CIFAR zoo: {", ".join(CIFAR_MODEL_NAMES)}.')
  return tuple(n['bias'] for n in norms), tuple(n['scale'] for n in norms)
