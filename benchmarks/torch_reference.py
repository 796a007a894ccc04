"""Plain PyTorch (eager) versions of kd_jax's distillation and teacher steps, to compare with.

  python -m benchmarks.torch_reference --depth 20 --m 3 --batch 128 --classes 100 --steps 20
  python -m benchmarks.torch_reference --model lenet5 --m 3 --batch 128 --classes 10
  python -m benchmarks.torch_reference --model lenet5 --kind teacher --members 3 --batch 256 \
      --classes 10

One step does what `kd_jax.train.make_distill_step` does: draw a batch from an in-memory uint8 train
set, random crop (pad 4) + horizontal flip, normalize, run the m PreResNet teachers in eval mode
under no_grad, average their softmax (log-mean-exp), run the student in train mode, tau^2-scaled
forward-KL loss at temperature tau, backward, SGD (momentum 0.9, Nesterov, weight decay 1e-4). The
network is written here from the same architecture description as kd_jax/models/preresnet.py
(pre-activation blocks, 1x1 projection of the raw input when the shape changes).

LeNet-5 (`--model lenet5`, 28x28x1 images) is written from kd_jax/models/lenet.py: conv 6@5x5
'same', ReLU, 2x2 pooling, conv 16@5x5 'valid', ReLU, 2x2 pooling, dense 120, 84, classes, with the
same pooling kind (max or average) as kd_jax's model (`pooling=`; benchmarks/side_by_side.py passes
kd_jax's). Its data are used as the Fashion-MNIST config uses them: no augmentation, only
normalization. The teacher step (`--kind teacher`) trains `members` networks one after the other,
each on its own batch (cross-entropy, SGD momentum 0.9, weight decay 5e-4), so that a step processes
members x batch images as kd_jax's stacked teacher step does.

The steps run on the CPU, or on a CUDA GPU with `device="cuda"` (`--device cuda`; the side-by-side
benchmark picks it when JAX runs on a GPU too): data, random draws and networks then live on the GPU
and each step ends with `torch.cuda.synchronize()`, so that its time is the GPU's.

Optional: torch is not a dependency of kd_jax. `available()` says whether it can be imported, and
the harness (benchmarks/kd_step.py --torch, --side-by-side) skips this reference cleanly when it
cannot.
"""

import argparse
import json
import math
import statistics

from benchmarks import cases as cases_lib
from benchmarks import harness

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:  # The harness checks available() before calling anything below.
  torch = None
  nn = None

# Training-set statistics on the [0, 1] scale (only their size matters for timing): CIFAR-100's, and
# Fashion-MNIST's for LeNet-5.
_MEAN = (0.507, 0.487, 0.441)
_STD = (0.267, 0.256, 0.276)
_GRAY_MEAN, _GRAY_STD = (0.286,), (0.353,)
KINDS = ("distill", "teacher")
POOLINGS = ("max", "avg")


def available() -> bool:
  return torch is not None


def cuda_available() -> bool:
  return torch is not None and torch.cuda.is_available()


def _synchronized(step, device):
  """step, made to wait for the GPU's work when `device` is a CUDA device (eager CPU work is
  synchronous)."""
  if torch.device(device).type != "cuda":
    return step

  def synchronized_step():
    result = step()
    torch.cuda.synchronize(device)
    return result

  return synchronized_step


def _conv(in_planes, out_planes, kernel, stride=1):
  return nn.Conv2d(in_planes, out_planes, kernel, stride=stride, padding=kernel // 2, bias=False)


if torch is not None:

  class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 plus the (projected) raw input."""
    expansion = 1

    def __init__(self, in_planes, planes, stride):
      super().__init__()
      self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), _conv(in_planes, planes, 3, stride)
      self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv(planes, planes, 3)
      needs_projection = stride != 1 or in_planes != planes
      self.shortcut = _conv(in_planes, planes, 1, stride) if needs_projection else None

    def forward(self, x):
      y = self.conv1(F.relu(self.bn1(x)))
      y = self.conv2(F.relu(self.bn2(y)))
      return y + (x if self.shortcut is None else self.shortcut(x))

  class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x) plus the (projected) input."""
    expansion = 4

    def __init__(self, in_planes, planes, stride):
      super().__init__()
      out_planes = planes * self.expansion
      self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), _conv(in_planes, planes, 1)
      self.bn2, self.conv2 = nn.BatchNorm2d(planes), _conv(planes, planes, 3, stride)
      self.bn3, self.conv3 = nn.BatchNorm2d(planes), _conv(planes, out_planes, 1)
      needs_projection = stride != 1 or in_planes != out_planes
      self.shortcut = _conv(in_planes, out_planes, 1, stride) if needs_projection else None

    def forward(self, x):
      y = self.conv1(F.relu(self.bn1(x)))
      y = self.conv2(F.relu(self.bn2(y)))
      y = self.conv3(F.relu(self.bn3(y)))
      return y + (x if self.shortcut is None else self.shortcut(x))

  class PreResNet(nn.Module):
    """CIFAR PreResNet: basic blocks below depth 44 (6n+2), bottlenecks from it (9n+2)."""

    def __init__(self, depth, num_classes, width=16):
      super().__init__()
      block = Bottleneck if depth >= 44 else BasicBlock
      n = (depth - 2) // (9 if block is Bottleneck else 6)
      self.stem = _conv(3, width, 3)
      layers, in_planes = [], width
      for multiplier, stride in ((1, 1), (2, 2), (4, 2)):
        for i in range(n):
          layers.append(block(in_planes, width * multiplier, stride if i == 0 else 1))
          in_planes = width * multiplier * block.expansion
      self.blocks = nn.Sequential(*layers)
      self.bn = nn.BatchNorm2d(in_planes)
      self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
      x = F.relu(self.bn(self.blocks(self.stem(x))))
      return self.fc(x.mean(dim=(2, 3)))

  class LeNet5(nn.Module):
    """kd_jax.models.LeNet5 in PyTorch: the same layers and parameters, `pooling` max or avg."""

    def __init__(self, num_classes, pooling="max"):
      super().__init__()
      if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
      self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
      self.conv2 = nn.Conv2d(6, 16, 5)
      self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84)
      self.fc3 = nn.Linear(84, num_classes)
      self.pool = F.max_pool2d if pooling == "max" else F.avg_pool2d
      for conv in (self.conv1, self.conv2):  # kaiming normal, fan_out: models.layers.conv_init
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
      x = self.pool(F.relu(self.conv1(x)), 2)
      x = self.pool(F.relu(self.conv2(x)), 2)
      x = F.relu(self.fc1(x.flatten(1)))
      return self.fc3(F.relu(self.fc2(x)))


def _network(model, depth, classes, pooling):
  if model == "lenet5":
    return LeNet5(classes, pooling)
  return PreResNet(depth, classes)


def _normalize(images, unused_generator=None):
  """uint8 (B, 28, 28, 1) -> normalized float (B, 1, 28, 28): the LeNet-5 configs' 'none' policy."""
  x = images.permute(0, 3, 1, 2).float().div_(255.0)
  return (x - _GRAY_MEAN[0]) / _GRAY_STD[0]


def _make_input(model, memory_format):
  augment = _normalize if model == "lenet5" else _augment
  return lambda images, generator: augment(images, generator).contiguous(
      memory_format=memory_format)


def _augment(images, generator):
  """uint8 (B, H, W, C) -> random crop (pad 4) + flip -> normalized float (B, C, H, W)."""
  batch, height, width, _ = images.shape
  x = images.permute(0, 3, 1, 2).float().div_(255.0)
  padded = F.pad(x, (4, 4, 4, 4))
  device = images.device
  offsets = torch.randint(0, 9, (batch, 2), generator=generator, device=device)
  rows = offsets[:, 0, None] + torch.arange(height, device=device)[None, :]  # (B, H)
  cols = offsets[:, 1, None] + torch.arange(width, device=device)[None, :]  # (B, W)
  flip = torch.rand(batch, generator=generator, device=device) < 0.5
  cols = torch.where(flip[:, None], cols.flip(1), cols)
  batch_index = torch.arange(batch, device=device)[:, None, None]
  x = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
  mean = torch.tensor(_MEAN, device=device).view(1, 1, 1, 3)
  std = torch.tensor(_STD, device=device).view(1, 1, 1, 3)
  return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def _ensemble_log_probs(member_logits):
  """log mean_i softmax(z_i), as kd_jax.losses.ensemble_log_probs."""
  log_probs = torch.stack([F.log_softmax(z, dim=-1) for z in member_logits])
  return torch.logsumexp(log_probs, dim=0) - math.log(len(member_logits))


def _kd_loss(student_logits, teacher_logits, temperature):
  """tau^2 * H(p_t^tau, p_s^tau), the paper's forward-KL objective (alpha = 0)."""
  teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)
  student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
  return -temperature**2 * (teacher_probs * student_log_probs).sum(-1).mean()


def _train_images(model, train_size, generator):
  return torch.randint(0, 256, (train_size, *cases_lib.MODEL_IMAGE_SHAPE[model]), dtype=torch.uint8,
                       generator=generator, device=generator.device)


def make_step(depth=20, m=3, batch=128, classes=100, temperature=4.0, train_size=50_000,
              channels_last=False, seed=0, model="preresnet", pooling="max", device="cpu"):
  """Returns the distillation step() -> loss (the loss is not fetched as a Python float)."""
  torch.manual_seed(seed)
  generator = torch.Generator(device=device).manual_seed(seed)
  images = _train_images(model, train_size, generator)
  student = _network(model, depth, classes, pooling).train()
  teachers = [_network(model, depth, classes, pooling).eval() for _ in range(m)]
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  make_input = _make_input(model, memory_format)
  for net in (student, *teachers):
    net.to(device=device, memory_format=memory_format)
  for teacher in teachers:
    teacher.requires_grad_(False)
  optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                              weight_decay=1e-4)

  def step():
    indices = torch.randint(0, train_size, (batch,), generator=generator, device=device)
    x = make_input(images[indices], generator)
    with torch.no_grad():
      teacher_logits = _ensemble_log_probs([teacher(x) for teacher in teachers])
    loss = _kd_loss(student(x), teacher_logits, temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss

  return _synchronized(step, device)


def make_teacher_step(depth=20, members=3, batch=256, classes=100, train_size=50_000,
                      channels_last=False, seed=0, model="preresnet", pooling="max", device="cpu"):
  """Returns step(): one cross-entropy SGD step of each of `members` networks, each on its batch."""
  torch.manual_seed(seed)
  generator = torch.Generator(device=device).manual_seed(seed)
  images = _train_images(model, train_size, generator)
  labels = torch.randint(0, classes, (train_size,), generator=generator, device=device)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  make_input = _make_input(model, memory_format)
  nets = [_network(model, depth, classes, pooling).train().to(device=device,
                                                              memory_format=memory_format)
          for _ in range(members)]
  learning_rate, weight_decay = (0.05, 5e-4) if model == "lenet5" else (0.1, 1e-4)
  optimizers = [torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=0.9,
                                weight_decay=weight_decay) for net in nets]

  def step():
    for net, optimizer in zip(nets, optimizers):
      indices = torch.randint(0, train_size, (batch,), generator=generator, device=device)
      loss = F.cross_entropy(net(make_input(images[indices], generator)), labels[indices])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()

  return _synchronized(step, device)


def build(kind="distill", model="preresnet", depth=20, m=3, members=1, batch=128, classes=100,
          channels_last=False, pooling="max", train_size=None, device="cpu"):
  """(step function, images per step) for one case on `device` ('cpu' | 'cuda'); train_size
  defaults to the model's data set."""
  if kind not in KINDS or model not in cases_lib.MODELS:
    raise ValueError(f"kind {kind!r} / model {model!r}: kinds are {KINDS}, "
                     f"models {cases_lib.MODELS}")
  train_size = train_size or cases_lib.MODEL_TRAIN_SIZE[model]
  common = dict(depth=depth, batch=batch, classes=classes, train_size=train_size,
                channels_last=channels_last, model=model, pooling=pooling, device=device)
  if kind == "teacher":
    return make_teacher_step(members=members, **common), members * batch
  return make_step(m=m, **common), batch


def benchmark(depth=20, m=3, batch=128, classes=100, steps=20, warmup=3, threads=0,
              channels_last=False, kind="distill", model="preresnet", members=1,
              pooling="max", device="cpu") -> dict:
  """Times the eager step: median of `steps` steps after `warmup`."""
  if threads:
    torch.set_num_threads(threads)
  step, images_per_step = build(kind, model, depth, m, members, batch, classes, channels_last,
                                pooling, device=device)
  harness.call_seconds(step, warmup)  # (a CUDA step waits for the GPU itself: _synchronized)
  times = harness.call_seconds(step, steps)
  step_s = statistics.median(times)
  return {"backend": f"torch-{torch.device(device).type}", "device": f"torch {torch.__version__}",
          "kind": kind,
          "model": model, "depth": depth if model == "preresnet" else None,
          "pooling": pooling if model == "lenet5" else None,
          "m": m if kind == "distill" else None, "members": members if kind == "teacher" else None,
          "batch": batch, "classes": classes, "precision": "fp32",
          "layout": "channels_last" if channels_last else "NCHW",
          "threads": torch.get_num_threads(), "steps": steps, "step_ms": round(step_s * 1e3, 2),
          "min_step_ms": round(min(times) * 1e3, 2),
          "images_per_second": round(images_per_step / step_s, 1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=cases_lib.MODELS, default="preresnet")
  parser.add_argument("--kind", choices=KINDS, default="distill")
  parser.add_argument("--pooling", choices=POOLINGS, default="max", help="lenet5's pooling")
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--m", type=int, default=3)
  parser.add_argument("--members", type=int, default=1, help="networks per teacher step")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--classes", type=int, default=100)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
  parser.add_argument("--channels-last", action="store_true")
  parser.add_argument("--device", default="cpu", help="cpu | cuda (a CUDA GPU)")
  args = parser.parse_args(argv)
  if not available():
    print(json.dumps({"skipped": "torch is not installed"}))
    return
  print(json.dumps(benchmark(args.depth, args.m, args.batch, args.classes, args.steps, args.warmup,
                             args.threads, args.channels_last, args.kind, args.model, args.members,
                             args.pooling, args.device)))


if __name__ == "__main__":
  main()
