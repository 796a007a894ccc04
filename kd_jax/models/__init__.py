"""Model zoo: `build_model(cfg, num_classes, dtype)` turns a model config into a flax.linen Module.

Every model is called as `model.apply(variables, x, train=..., mutable=...)` with `x` a normalized
float array (N, H, W, C) (bilstm: int32 token ids (N, L), kd_jax/data/text.py) and returns float32
logits (N, num_classes), whatever the compute `dtype` (parameters always stay float32). BatchNorm
models keep running statistics in 'batch_stats'. Each model sows the activation at the end of each
stage as 'intermediates'/'stage{i}' (i = 1, 2, ...; a one-element tuple, as `Module.sow` stores it)
for representation-similarity (CKA) analysis.

Config fields (a `kd_jax.config.model_config()`, which states every default once):
  name:  'preresnet' | 'lenet5' | 'vgg16' | 'digits_cnn' | 'mlp' | 'resnet50' (ImageNet, v1.5) |
         'bilstm' (text) | the CIFAR-100 distillation benchmark's models (CRD / mdistiller names,
         kd_jax/models/cifar_zoo.py): 'resnet20', 'resnet32', 'resnet56', 'resnet110', 'resnet8x4',
         'resnet32x4', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2', 'vgg8', 'vgg13', 'MobileNetV2',
         'ShuffleV1', 'ShuffleV2', 'ResNet50' (CIFAR; 'resnet50' is the ImageNet one); these have
         fixed widths and read no other field
  depth: preresnet depth, 6n+2 for basic blocks or 9n+2 for bottlenecks
  block: 'auto' | 'basic' | 'bottleneck' (preresnet; 'auto' = basic below depth 44, else bottleneck,
         the switch of the original code, so PreResNet-56 is a bottleneck net)
  norm:  'batch' | 'layer' (preresnet; 'layer' = LayerNorm over H, W, C of each example)
  width: base width, 0 for the model's own: preresnet first-stage planes (16), vgg16 first-block
         channels (64), resnet50 stem channels and first-stage planes (64), digits_cnn first conv
         channels (32), mlp hidden units (256), bilstm LSTM cell size (70); lenet5 has a fixed width.
  head:  'dropout_mlp' | 'linear' (vgg16 classifier; 'dropout_mlp' is the original code's: two
         512-wide Dropout-Dense-ReLU layers; 'linear' is one Dense layer)
  pooling: 'avg' | 'max' (lenet5; 'avg' is the original code's)
  init:  'flax' | 'torch' (lenet5, preresnet: the original code's PyTorch default initialization;
         kd_jax/models/layers.py)
  embedding_size, lstm_layers: bilstm token embedding size (128) and stacked bidirectional layers (2)
`depth`, `block`, `norm`, `head`, `pooling`, `embedding_size` and `lstm_layers` are ignored by the
models they do not name.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.errors import KdJaxError
from kd_jax.models.cifar_zoo import CIFAR_MODEL_NAMES, cifar_model
from kd_jax.models.layers import MODEL_INITS
from kd_jax.models.lenet import LENET_POOLINGS, LeNet5
from kd_jax.models.lstm import BiLSTM
from kd_jax.models.preresnet import PreResNet, blocks_per_stage
from kd_jax.models.resnet import ResNet
from kd_jax.models.small import MLP, DigitsCNN
from kd_jax.models.vgg import VGG, VGG16_LAYOUT, VGG_HEADS

MODEL_NAMES = ('bilstm', 'digits_cnn', 'lenet5', 'mlp', 'preresnet', 'resnet50', 'vgg16',
               *CIFAR_MODEL_NAMES)
TEXT_MODEL_NAMES = ('bilstm',)  # models of token ids
DEFAULT_WIDTH = {'preresnet': 16, 'vgg16': 64, 'digits_cnn': 32, 'mlp': 256, 'bilstm': 70,
                 'resnet50': 64}
PRERESNET_BLOCKS = ('auto', 'basic', 'bottleneck')
PRERESNET_NORMS = ('batch', 'layer')
# The original pytorch-classification code switches to bottleneck blocks at this depth.
AUTO_BOTTLENECK_MIN_DEPTH = 44


def resolve_preresnet_block(depth: int, block: str) -> str:
  """'basic' or 'bottleneck' for a PreResNet of `depth`; raises KdJaxError for an invalid pair."""
  if block not in PRERESNET_BLOCKS:
    raise KdJaxError(f'preresnet block {block!r} is unknown; valid blocks: '
                     f'{", ".join(PRERESNET_BLOCKS)}')
  resolved = block
  if block == 'auto':
    resolved = 'bottleneck' if depth >= AUTO_BOTTLENECK_MIN_DEPTH else 'basic'
  try:
    blocks_per_stage(depth, resolved)
  except ValueError:
    raise KdJaxError(
        f'preresnet depth {depth} is invalid with block={block!r} (uses {resolved} blocks): '
        'basic blocks need depth = 6n+2 (20, 32, 44, 56, 110), bottleneck blocks 9n+2 '
        f"(29, 56, 110, ...); block='auto' picks basic below depth {AUTO_BOTTLENECK_MIN_DEPTH}, "
        'bottleneck from it on'
    ) from None
  return resolved


def _get_choice(cfg, field: str, choices, name: str) -> str:
  """cfg.<field> if it is one of `choices`, else a one-line KdJaxError."""
  value = cfg[field]
  if value not in choices:
    raise KdJaxError(f'{name} {field} {value!r} is unknown; valid values: {", ".join(choices)}')
  return value


def _get_init(cfg, name: str) -> str:
  """cfg.init ('flax' when absent); 'torch' only for the models that implement it."""
  init = cfg.get('init', MODEL_INITS[0])
  if init not in MODEL_INITS:
    raise KdJaxError(f'model init {init!r} is unknown; valid values: {", ".join(MODEL_INITS)}')
  if init != MODEL_INITS[0] and name not in ('lenet5', 'preresnet'):
    raise KdJaxError(f"model init {init!r} is implemented for lenet5 and preresnet, not {name}; "
                     f"use init='{MODEL_INITS[0]}'")
  return init


def _get_width(cfg, name: str) -> int:
  width = cfg.width
  if width is None or width == 0:  # 0 is the config files' "model default"
    return DEFAULT_WIDTH[name]
  if isinstance(width, bool) or not isinstance(width, int) or width < 1:
    raise KdJaxError(f'{name} width must be a positive integer, got {width!r}')
  return width


def build_model(cfg, num_classes: int, dtype=jnp.float32, num_tokens: int = 0) -> nn.Module:
  """The model `cfg` describes (see the module docstring), computing in `dtype`.

  `num_tokens` > 0: the data are token ids below it (a text dataset's `num_tokens`), which only the
  text models read, and which they need.
  """
  name = cfg.name
  if name not in MODEL_NAMES:
    raise KdJaxError(f'unknown model name {name!r}; valid names: {", ".join(MODEL_NAMES)}')
  if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
      or num_classes < 1):
    raise KdJaxError(f'num_classes must be a positive integer, got {num_classes!r}')
  num_classes = int(num_classes)
  _get_init(cfg, name)  # refused for the models that do not implement it, before anything is built
  if (name in TEXT_MODEL_NAMES) != (num_tokens > 0):
    raise KdJaxError(f'model {name!r} reads {"token ids" if name in TEXT_MODEL_NAMES else "images"}'
                     f' but the data are {"token ids" if num_tokens > 0 else "images"}: use '
                     f'{", ".join(TEXT_MODEL_NAMES)} with a text data source (kd_jax/data/text.py) '
                     'and the other models with images')
  if name == 'bilstm':
    layers, embedding_size = cfg.get('lstm_layers', 2), cfg.get('embedding_size', 128)
    if min(layers, embedding_size) < 1:
      raise KdJaxError(f'bilstm needs lstm_layers >= 1 and embedding_size >= 1, got {layers} and '
                       f'{embedding_size}')
    return BiLSTM(num_classes=num_classes, num_tokens=int(num_tokens), embedding_size=embedding_size,
                  cell_size=_get_width(cfg, name), layers=layers, dtype=dtype)

  if name in CIFAR_MODEL_NAMES:
    if cfg.width not in (None, 0):
      raise KdJaxError(f'{name} has a fixed width; set model.width=0 (its default)')
    return cifar_model(name, num_classes, dtype)
  if name == 'preresnet':
    depth = cfg.depth
    if isinstance(depth, bool) or not isinstance(depth, int):
      raise KdJaxError(f'preresnet depth must be an integer, got {depth!r}')
    block = resolve_preresnet_block(depth, cfg.block)
    norm = cfg.norm
    if norm not in PRERESNET_NORMS:
      raise KdJaxError(f'preresnet norm {norm!r} is unknown; valid norms: '
                       f'{", ".join(PRERESNET_NORMS)}')
    return PreResNet(num_classes=num_classes, depth=depth, block=block,
                     width=_get_width(cfg, name), norm=norm, dtype=dtype,
                     param_init=_get_init(cfg, name))
  if name == 'lenet5':
    if cfg.width not in (None, 0):
      # Refuse rather than silently ignore, so a width sweep cannot train the same net repeatedly.
      raise KdJaxError('lenet5 has a fixed width; set model.width=0 (its default)')
    return LeNet5(num_classes=num_classes, pooling=_get_choice(cfg, 'pooling', LENET_POOLINGS, name),
                  dtype=dtype, param_init=_get_init(cfg, name))
  if name == 'vgg16':
    return VGG(num_classes=num_classes, layout=VGG16_LAYOUT, width=_get_width(cfg, name),
               head=_get_choice(cfg, 'head', VGG_HEADS, name), dtype=dtype)
  if name == 'resnet50':
    return ResNet(num_classes=num_classes, width=_get_width(cfg, name), dtype=dtype)
  if name == 'digits_cnn':
    return DigitsCNN(num_classes=num_classes, width=_get_width(cfg, name), dtype=dtype)
  return MLP(num_classes=num_classes, width=_get_width(cfg, name), dtype=dtype)


def param_count(params) -> int:
  """Number of scalars in a pytree; pass `variables['params']` to leave out batch_stats."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))


__all__ = ['build_model', 'param_count', 'MODEL_NAMES', 'VGG_HEADS', 'LENET_POOLINGS', 'PreResNet',
           'LeNet5', 'VGG', 'DigitsCNN', 'MLP', 'BiLSTM', 'ResNet']
