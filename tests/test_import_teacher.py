"""Tests for `python -m kd_jax.import_teacher`: PyTorch teachers of the CIFAR-100 benchmark.

The PyTorch models below are transcribed here from the published definitions (RepDistiller
`models/`, mdistiller `mdistiller/models/cifar/`): the same module attribute names, hence the same
state_dict keys, and the same forward pass, returning mdistiller's feats and preact_feats. Each test
gives one random weights and random BatchNorm statistics, saves its state_dict with torch.save,
converts it with the command as a user runs it, loads the result the way config.teacher.load_from
does (kd_jax.study.teachers.load_teachers) and compares eval-mode logits and stage features on the same
random images.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_jax import config as kd_config
from kd_jax import parallel
from kd_jax.study import teachers as study_teachers
from kd_jax.import_teacher import IMPORT_FILE, main, read_state_dict
from kd_jax.models import build_model

from conftest import REPO
from conftest import PARAMS_AT_100_CLASSES

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:  # the tests that need PyTorch skip (pytest.importorskip); the classes go unused
  torch = nn = F = None

TorchModule = object if nn is None else nn.Module
IMAGES = 2


def conv2d(c_in, c_out, kernel, stride=1, padding=0, groups=1, bias=False):
  return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=bias)


def run_layers(x, layers):
  """Runs nn.Sequentials of blocks returning (output, preactivation) on the stem output x; returns
  (x, feats, preact_feats) as mdistiller's models collect them."""
  feats, preacts = [x], [x]
  for layer in layers:
    for block in layer:
      x, preact = block(x)
    feats.append(x)
    preacts.append(preact)
  return x, feats, preacts


# --- resnet.py: resnet20 ... resnet110, resnet8x4, resnet32x4 ------------------------------------

class TorchBasicBlock(TorchModule):
  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = conv2d(inplanes, planes, 3, stride, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv2d(planes, planes, 3, 1, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    preact = out + (x if self.downsample is None else self.downsample(x))
    return F.relu(preact), preact


class TorchResNet(TorchModule):
  def __init__(self, depth, filters, num_classes):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = conv2d(3, filters[0], 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(filters[0])
    inplanes = filters[0]
    for stage, planes in enumerate(filters[1:], start=1):
      blocks = []
      for i in range(n):
        stride = 2 if stage > 1 and i == 0 else 1
        downsample = None
        if stride != 1 or inplanes != planes:
          downsample = nn.Sequential(conv2d(inplanes, planes, 1, stride), nn.BatchNorm2d(planes))
        blocks.append(TorchBasicBlock(inplanes, planes, stride, downsample))
        inplanes = planes
      setattr(self, f'layer{stage}', nn.Sequential(*blocks))
    self.fc = nn.Linear(filters[3], num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x, feats, preacts = run_layers(x, (self.layer1, self.layer2, self.layer3))
    pooled = F.avg_pool2d(x, 8).flatten(1)
    return self.fc(pooled), feats, preacts, pooled


# --- resnetv2.py: ResNet50 ----------------------------------------------------------------------

class TorchBottleneck(TorchModule):
  def __init__(self, in_planes, planes, stride):
    super().__init__()
    self.conv1 = conv2d(in_planes, planes, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv2d(planes, planes, 3, stride, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = conv2d(planes, 4 * planes, 1)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != 4 * planes:
      self.shortcut = nn.Sequential(conv2d(in_planes, 4 * planes, 1, stride),
                                    nn.BatchNorm2d(4 * planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    preact = self.bn3(self.conv3(out)) + self.shortcut(x)
    return F.relu(preact), preact


class TorchResNet50(TorchModule):
  def __init__(self, num_classes):
    super().__init__()
    self.conv1 = conv2d(3, 64, 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(64)
    in_planes = 64
    for stage, (planes, blocks, stride) in enumerate(
        ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
      layers = []
      for i in range(blocks):
        layers.append(TorchBottleneck(in_planes, planes, stride if i == 0 else 1))
        in_planes = 4 * planes
      setattr(self, f'layer{stage}', nn.Sequential(*layers))
    self.linear = nn.Linear(2048, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x, feats, preacts = run_layers(x, (self.layer1, self.layer2, self.layer3, self.layer4))
    pooled = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    return self.linear(pooled), feats, preacts, pooled


# --- wrn.py: wrn_16_2, wrn_40_1, wrn_40_2 -----------------------------------------------------

class TorchWideBlock(TorchModule):
  def __init__(self, in_planes, out_planes, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = conv2d(in_planes, out_planes, 3, stride, 1)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.conv2 = conv2d(out_planes, out_planes, 3, 1, 1)
    self.equalInOut = in_planes == out_planes  # pylint: disable=invalid-name (the reference's)
    self.convShortcut = None if self.equalInOut else conv2d(in_planes, out_planes, 1, stride)

  def forward(self, x):
    if self.equalInOut:
      out = F.relu(self.bn1(x))
    else:
      x = F.relu(self.bn1(x))
      out = x
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return (x if self.equalInOut else self.convShortcut(x)) + out


class TorchNetworkBlock(TorchModule):
  def __init__(self, n, in_planes, out_planes, stride):
    super().__init__()
    self.layer = nn.Sequential(*[TorchWideBlock(in_planes if i == 0 else out_planes, out_planes,
                                                stride if i == 0 else 1) for i in range(n)])

  def forward(self, x):
    return self.layer(x)


class TorchWideResNet(TorchModule):
  def __init__(self, depth, widen_factor, num_classes):
    super().__init__()
    n = (depth - 4) // 6
    channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    self.conv1 = conv2d(3, 16, 3, 1, 1)
    self.block1 = TorchNetworkBlock(n, channels[0], channels[1], 1)
    self.block2 = TorchNetworkBlock(n, channels[1], channels[2], 2)
    self.block3 = TorchNetworkBlock(n, channels[2], channels[3], 2)
    self.bn1 = nn.BatchNorm2d(channels[3])
    self.fc = nn.Linear(channels[3], num_classes)

  def forward(self, x):
    f0 = self.conv1(x)
    f1 = self.block1(f0)
    f2 = self.block2(f1)
    f3 = self.block3(f2)
    pooled = F.avg_pool2d(F.relu(self.bn1(f3)), 8).flatten(1)
    preacts = [f0, self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)]
    return self.fc(pooled), [f0, f1, f2, f3], preacts, pooled


# --- vgg.py: vgg8_bn, vgg13_bn ------------------------------------------------------------------

class TorchVGG(TorchModule):
  def __init__(self, blocks, num_classes):
    super().__init__()
    in_channels = 3
    for index, block in enumerate(blocks):
      layers = []
      for channels in block:
        layers += [conv2d(in_channels, channels, 3, 1, 1, bias=True), nn.BatchNorm2d(channels),
                   nn.ReLU(inplace=True)]
        in_channels = channels
      setattr(self, f'block{index}', nn.Sequential(*layers[:-1]))
    self.classifier = nn.Linear(512, num_classes)

  def forward(self, x):
    h = x.shape[2]
    x = F.relu(self.block0(x))
    feats, preacts = [x], [x]
    for index, block in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
      if index < 4 or h == 64:
        x = F.max_pool2d(x, 2, 2)
      x = block(x)
      preacts.append(x)
      x = F.relu(x)
      feats.append(x)
    pooled = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    return self.classifier(pooled), feats, preacts, pooled


# --- mobilenetv2.py: mobile_half ------------------------------------------------------------------

class TorchInvertedResidual(TorchModule):
  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = inp * expand_ratio
    self.use_res_connect = stride == 1 and inp == oup
    self.conv = nn.Sequential(
        conv2d(inp, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        conv2d(hidden, hidden, 3, stride, 1, groups=hidden), nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        conv2d(hidden, oup, 1), nn.BatchNorm2d(oup))

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchMobileNetV2(TorchModule):
  def __init__(self, num_classes, expansion=6, width=0.5):
    super().__init__()
    setting = [[1, 16, 1, 1], [expansion, 24, 2, 1], [expansion, 32, 3, 2], [expansion, 64, 4, 2],
               [expansion, 96, 3, 1], [expansion, 160, 3, 2], [expansion, 320, 1, 1]]
    channels = int(32 * width)
    self.conv1 = nn.Sequential(conv2d(3, channels, 3, 2, 1), nn.BatchNorm2d(channels),
                               nn.ReLU(inplace=True))
    self.blocks = nn.ModuleList()
    for t, c, n, s in setting:
      layers = []
      for stride in [s] + [1] * (n - 1):
        layers.append(TorchInvertedResidual(channels, int(c * width), stride, t))
        channels = int(c * width)
      self.blocks.append(nn.Sequential(*layers))
    self.conv2 = nn.Sequential(conv2d(channels, 1280, 1), nn.BatchNorm2d(1280),
                               nn.ReLU(inplace=True))
    self.classifier = nn.Sequential(nn.Linear(1280, num_classes))
    self.avgpool = nn.AvgPool2d(2, ceil_mode=True)  # 32 // (32 // 2) for 32x32 inputs

  def forward(self, x):
    out = self.conv1(x)
    feats = [out]
    for index, block in enumerate(self.blocks):
      out = block(out)
      if index in (1, 2, 4, 6):
        feats.append(out)
    pooled = self.avgpool(self.conv2(out)).flatten(1)
    return self.classifier(pooled), feats, feats, pooled


# --- ShuffleNetv1.py / ShuffleNetv2.py --------------------------------------------------------

def torch_shuffle(x, groups):
  n, c, h, w = x.size()
  return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class TorchShuffleV1Block(TorchModule):
  def __init__(self, in_planes, out_planes, stride, groups):
    super().__init__()
    self.stride = stride
    mid = int(out_planes / 4)
    self.g = 1 if in_planes == 24 else groups
    self.conv1 = conv2d(in_planes, mid, 1, groups=self.g)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = conv2d(mid, mid, 3, stride, 1, groups=mid)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = conv2d(mid, out_planes, 1, groups=groups)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = nn.Sequential()
    if stride == 2:
      self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

  def forward(self, x):
    out = torch_shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = self.shortcut(x)
    preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
    return F.relu(preact), preact


class TorchShuffleV1(TorchModule):
  def __init__(self, num_classes):
    super().__init__()
    self.conv1 = conv2d(3, 24, 1)
    self.bn1 = nn.BatchNorm2d(24)
    in_planes = 24
    for stage, (out_planes, blocks) in enumerate(((240, 4), (480, 8), (960, 4)), start=1):
      layers = []
      for i in range(blocks):
        layers.append(TorchShuffleV1Block(in_planes, out_planes - (in_planes if i == 0 else 0),
                                          2 if i == 0 else 1, 3))
        in_planes = out_planes
      setattr(self, f'layer{stage}', nn.Sequential(*layers))
    self.linear = nn.Linear(960, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x, feats, preacts = run_layers(x, (self.layer1, self.layer2, self.layer3))
    pooled = F.avg_pool2d(x, 4).flatten(1)
    return self.linear(pooled), feats, preacts, pooled


class TorchShuffleV2Block(TorchModule):
  def __init__(self, in_channels):
    super().__init__()
    c = in_channels // 2
    self.conv1 = conv2d(c, c, 1)
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = conv2d(c, c, 3, 1, 1, groups=c)
    self.bn2 = nn.BatchNorm2d(c)
    self.conv3 = conv2d(c, c, 1)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x):
    c = int(x.size(1) * 0.5)
    x1, x2 = x[:, :c], x[:, c:]
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
    preact = self.bn3(self.conv3(out))
    out = torch.cat([x1, F.relu(preact)], 1)
    return torch_shuffle(out, 2), torch.cat([x1, preact], 1)


class TorchShuffleV2Down(TorchModule):
  def __init__(self, in_channels, out_channels):
    super().__init__()
    mid = out_channels // 2
    self.conv1 = conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels)
    self.bn1 = nn.BatchNorm2d(in_channels)
    self.conv2 = conv2d(in_channels, mid, 1)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = conv2d(in_channels, mid, 1)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = conv2d(mid, mid, 3, 2, 1, groups=mid)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = conv2d(mid, mid, 1)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x):
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
    right = F.relu(self.bn5(self.conv5(right)))
    return torch_shuffle(torch.cat([left, right], 1), 2), None


class TorchShuffleV2(TorchModule):
  def __init__(self, num_classes):
    super().__init__()
    self.conv1 = conv2d(3, 24, 1)
    self.bn1 = nn.BatchNorm2d(24)
    in_channels = 24
    for stage, (out_channels, blocks) in enumerate(((116, 3), (232, 7), (464, 3)), start=1):
      layers = [TorchShuffleV2Down(in_channels, out_channels)]
      layers += [TorchShuffleV2Block(out_channels) for _ in range(blocks)]
      in_channels = out_channels
      setattr(self, f'layer{stage}', nn.Sequential(*layers))
    self.conv2 = conv2d(464, 1024, 1)
    self.bn2 = nn.BatchNorm2d(1024)
    self.linear = nn.Linear(1024, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x, feats, preacts = run_layers(x, (self.layer1, self.layer2, self.layer3))
    pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).flatten(1)
    return self.linear(pooled), feats, preacts, pooled


RESNET, RESNET_X4 = (16, 16, 32, 64), (32, 64, 128, 256)
REFERENCES = {
    'resnet20': lambda k: TorchResNet(20, RESNET, k),
    'resnet32': lambda k: TorchResNet(32, RESNET, k),
    'resnet56': lambda k: TorchResNet(56, RESNET, k),
    'resnet110': lambda k: TorchResNet(110, RESNET, k),
    'resnet8x4': lambda k: TorchResNet(8, RESNET_X4, k),
    'resnet32x4': lambda k: TorchResNet(32, RESNET_X4, k),
    'wrn_16_2': lambda k: TorchWideResNet(16, 2, k),
    'wrn_40_1': lambda k: TorchWideResNet(40, 1, k),
    'wrn_40_2': lambda k: TorchWideResNet(40, 2, k),
    'vgg8': lambda k: TorchVGG([[64], [128], [256], [512], [512]], k),
    'vgg13': lambda k: TorchVGG([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], k),
    'MobileNetV2': TorchMobileNetV2,
    'ShuffleV1': TorchShuffleV1,
    'ShuffleV2': TorchShuffleV2,
    'ResNet50': TorchResNet50,
}


def reference_model(arch, num_classes=100, seed=0):
  """The PyTorch model with random weights and BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  model = REFERENCES[arch](num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        channels = module.num_features
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.3)
        module.running_var.uniform_(0.5, 2.0)
        module.num_batches_tracked.fill_(1000 + channels)
      elif isinstance(module, nn.Linear):
        module.bias.normal_(0.0, 0.1)
      elif isinstance(module, nn.Conv2d) and module.bias is not None:
        module.bias.normal_(0.0, 0.1)
  return model.eval()


def save(obj, path):
  torch.save(obj, path)
  return str(path)


def import_command(*args):
  return subprocess.run([sys.executable, '-m', 'kd_jax.import_teacher', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def nhwc(tensor):
  return tensor.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(actual, expected, what):
  """Equal within float32 rounding, relative to the tensor's scale."""
  expected = np.asarray(expected)
  scale = max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=1e-4 * scale, err_msg=what)


def loaded_teachers(arch, out, members):
  """The teachers as config.teacher.load_from loads them, and the kd_jax model."""
  model = build_model(kd_config.model_config(name=arch), 100)
  stacked = study_teachers.load_teachers(model, str(out), members, (32, 32, 3), parallel.make_mesh())
  return model, [jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked) for i in range(members)]


def assert_same_outputs(model, variables, reference, images):
  with torch.no_grad():
    logits, feats, preacts, pooled = reference(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  ours, features = jax.jit(lambda v, x: model.apply(v, x, train=False, features=True))(
      variables, images)
  assert_close(ours, logits.numpy(), 'logits')
  assert_close(features.pooled, pooled.numpy(), 'pooled features')
  assert len(features.stages) == len(feats) and len(features.preact_stages) == len(preacts)
  for i, (stage, feat) in enumerate(zip(features.stages, feats)):
    assert_close(stage, nhwc(feat), f'stage {i}')
  for i, (stage, preact) in enumerate(zip(features.preact_stages, preacts)):
    assert_close(stage, nhwc(preact), f'preactivation stage {i}')


def test_transcriptions_have_the_published_parameter_counts():
  pytest.importorskip('torch')
  for arch, build in REFERENCES.items():
    assert sum(p.numel() for p in build(100).parameters()) == PARAMS_AT_100_CLASSES[arch], arch


# One architecture of each structure (the others differ from one of these only in depth or width,
# which their parameter counts check): post-activation ResNets with projections at stride 1 and 2
# (resnet8x4) and identity blocks (resnet20), a Wide ResNet whose first block keeps its width
# (wrn_40_1; wrn_16_2 is the ensemble test's), VGG blocks of two convolutions, MobileNetV2, both
# ShuffleNets and the bottleneck ResNet50. All 15 agree as well; this keeps the suite short.
CHECKED_ARCHS = ('resnet8x4', 'resnet20', 'wrn_40_1', 'vgg13', 'MobileNetV2', 'ShuffleV1',
                 'ShuffleV2', 'ResNet50')


@pytest.mark.parametrize('arch', CHECKED_ARCHS)
def test_imported_teacher_reproduces_pytorch(arch, tmp_path, capsys):
  pytest.importorskip('torch')
  reference = reference_model(arch)
  checkpoint = save({'model': reference.state_dict(), 'epoch': 240}, tmp_path / 'ckpt.pth')
  out = tmp_path / 'teacher'
  main([f'--torch={checkpoint}', f'--arch={arch}', f'--out={out}'])  # the command, in-process
  assert f'--config.teacher.model.name={arch}' in capsys.readouterr().out
  record = json.loads((out / IMPORT_FILE).read_text())
  assert (record['arch'], record['num_classes'], record['ensemble_size']) == (arch, 100, 1)
  assert record['members'][0]['source'] == checkpoint
  model, (variables,) = loaded_teachers(arch, out, 1)
  images = np.random.default_rng(0).standard_normal((IMAGES, 32, 32, 3)).astype(np.float32)
  assert_same_outputs(model, variables, reference, images)


def test_ensemble_of_several_files(tmp_path):
  """The command as a user runs it: members in the order of --torch; the bare and 'net'-wrapped
  layouts, DataParallel's prefix."""
  pytest.importorskip('torch')
  references = [reference_model('wrn_16_2', seed=seed) for seed in (1, 2)]
  bare = save(references[0].state_dict(), tmp_path / 'bare.pth')
  wrapped = save({'net': {f'module.{k}': v for k, v in references[1].state_dict().items()}},
                 tmp_path / 'wrapped.pth')
  out = tmp_path / 'ensemble'
  result = import_command('--torch', bare, wrapped, '--arch=wrn_16_2', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert '--config.teacher.ensemble_size=2' in result.stdout
  record = json.loads((out / IMPORT_FILE).read_text())
  assert [m['source'] for m in record['members']] == [bare, wrapped]
  model, members = loaded_teachers('wrn_16_2', out, 2)
  images = np.random.default_rng(1).standard_normal((IMAGES, 32, 32, 3)).astype(np.float32)
  for variables, reference in zip(members, references):
    assert_same_outputs(model, variables, reference, images)


def test_state_dict_layouts_read_alike(tmp_path):
  pytest.importorskip('torch')
  state = reference_model('resnet8x4').state_dict()
  expected = read_state_dict(save(state, tmp_path / 'bare.pth'))
  assert set(expected) == set(state)
  for name, obj in (('model', {'model': state, 'accuracy': torch.tensor(79.4)}),
                    ('state_dict', {'state_dict': state}),
                    ('module', {f'module.{k}': v for k, v in state.items()})):
    got = read_state_dict(save(obj, tmp_path / f'{name}.pth'))
    assert list(got) == list(expected)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])


def run_main(args, capsys):
  """`main(args)`'s exit status and its one stderr line."""
  with pytest.raises(SystemExit) as exit_info:
    main(args)
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  return exit_info.value.code, lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
  pytest.importorskip('torch')
  reference = reference_model('resnet8x4')
  checkpoint = save({'model': reference.state_dict()}, tmp_path / 'resnet8x4.pth')
  out = str(tmp_path / 'out')

  cases = [
      # another architecture: resnet32x4 has the same first keys, then more blocks
      ([f'--torch={checkpoint}', '--arch=resnet32x4'], 'layer1.1.conv1.weight is missing'),
      ([f'--torch={checkpoint}', '--arch=vgg8'], 'conv1.weight is not a key of vgg8'),
      ([f'--torch={checkpoint}', '--arch=resnet8x4', '--num_classes=10'],
       'fc.weight has shape (100, 256), resnet8x4 wants (10, 256)'),
      ([f'--torch={tmp_path / "none.pth"}', '--arch=resnet8x4'], 'does not exist'),
      ([f'--torch={checkpoint}', '--arch=resnet9'], "unknown --arch 'resnet9'"),
  ]
  extra = dict(reference.state_dict(), **{'layer1.0.extra.weight': torch.zeros(3)})
  cases.append(([f'--torch={save(extra, tmp_path / "extra.pth")}', '--arch=resnet8x4'],
                'layer1.0.extra.weight is not a key of resnet8x4'))
  shapes = dict(reference.state_dict(), **{'layer2.0.bn1.running_var': torch.ones(5)})
  cases.append(([f'--torch={save(shapes, tmp_path / "shapes.pth")}', '--arch=resnet8x4'],
                'layer2.0.bn1.running_var has shape (5,), resnet8x4 wants (128,)'))
  (tmp_path / 'notes.pth').write_text('not a checkpoint')
  cases.append(([f'--torch={tmp_path / "notes.pth"}', '--arch=resnet8x4'],
                'is not a PyTorch checkpoint'))
  cases.append(([f'--torch={save({"epoch": 3}, tmp_path / "epoch.pth")}', '--arch=resnet8x4'],
                'holds no state_dict'))
  nan = dict(reference.state_dict(), **{'fc.bias': torch.full((100,), float('nan'))})
  cases.append(([f'--torch={save(nan, tmp_path / "nan.pth")}', '--arch=resnet8x4'],
                'fc.bias holds non-finite values'))
  for args, message in cases:
    status, line = run_main([*args, f'--out={out}'], capsys)
    assert status == 2 and line.startswith('error: ') and message in line, (args, line)
    assert not os.path.exists(out), args  # nothing written

  main([f'--torch={checkpoint}', '--arch=resnet8x4', f'--out={out}'])
  status, line = run_main([f'--torch={checkpoint}', '--arch=resnet8x4', f'--out={out}'], capsys)
  assert status == 2 and 'already holds teachers' in line


def test_without_pytorch_the_command_says_how_to_install_it(tmp_path):
  code = ('import sys; sys.modules["torch"] = None; from kd_jax.import_teacher import main; '
          f'main(["--torch={tmp_path / "x.pth"}", "--arch=resnet20", "--out={tmp_path / "out"}"])')
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: reading PyTorch checkpoints needs PyTorch: pip install "
                                   "'kd_jax[torch]' (or torch==2.13.0)")
