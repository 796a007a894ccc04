"""Streamed input: images/s that the host decodes and augments, against images/s the step consumes.

    python -m benchmarks.stream                       # ImageNet-like JPEGs, 224 crops, ResNet-50
    python -m benchmarks.stream --model preresnet --crop 32 --image-size 40 --batch 128

Writes --images synthetic JPEGs of about --image-size pixels a side (ImageNet's average is near 400
x 350) into a temporary image folder, reads them through the streamed path of a training run
(kd_jax.data.stream.train_batches on grain with --threads reader threads: decode, random-resized
crop, flip, batching) and times it; then times the fused distillation step (m = 1 teacher, same
model) on batches of the same shape on this machine's default JAX device. When the first number is
below the second, the input is the bottleneck: add reader threads (data.stream.threads), cores, or
hosts. Prints one JSON line.
"""

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
import PIL.Image

from benchmarks import cases, harness
from kd_jax import config as kd_config
from kd_jax import parallel, train
from kd_jax.data import stream
from kd_jax.models import build_model


def write_jpegs(root, count, size, classes=10, seed=0):
  """`count` smooth random JPEGs (quality 90, sizes 0.75-1.25 x `size`), spread over `classes`."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    height, width = (rng.uniform(0.75, 1.25, size=2) * size).astype(int)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.BILINEAR)
    for split in ("train", "test"):
      folder = os.path.join(root, split, f"c{i % classes}")
      os.makedirs(folder, exist_ok=True)
      if split == "train" or i < classes:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        with open(os.path.join(folder, f"{i}.jpg"), "wb") as f:
          f.write(buffer.getvalue())


def input_rate(root, crop, batch, threads, batches):
  """Images/s of decode + random-resized crop + flip + batching through grain, after a warm-up."""
  import grain  # pylint: disable=g-import-not-at-top
  cfg = kd_config.default_config().data
  cfg.update(dict(source="image_folder", name="", path=root))
  source = stream.open_source(cfg)
  dataset = stream.train_batches(source.train, stream.HostAugment(crop_size=crop), seeds=(0, 1),
                                 global_batch=batch)
  iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                            prefetch_buffer_size=threads)))
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def step_rate(model_name, crop, batch, steps):
  """Images/s of the fused distillation step (1 teacher, same model) on uint8 batches of that shape,
  in its streamed form (the batch given to the step, as the streamed runs feed it)."""
  mesh = parallel.make_mesh()
  config = kd_config.default_config()
  config.student.model = kd_config.model_config(name=model_name)
  config.student.batch_size = batch
  config.data.augment = "none"
  config.distill.temperature = 1.0
  model = build_model(config.student.model, 1000)
  tx = train.make_optimizer(kd_config.optimizer_config(weight_decay=0.0), 1000, 100)
  shape = (crop, crop, 3)
  state = cases.initial_state(model, tx, mesh, shape)
  teacher = train.model_variables(cases.stacked_states(model, tx, 1, mesh, shape))
  step = cases.distill_step(config, model, model, tx, mesh, streamed=True)
  images = np.random.default_rng(0).integers(0, 256, (batch, *shape), np.uint8)
  labels = np.zeros((batch,), np.int32)
  mean, std = np.full((3,), 0.5, np.float32), np.full((3,), 0.25, np.float32)
  batch_args = parallel.replicate((images, labels, mean, std), mesh)
  times, _, _ = harness.time_steps(step, [state, teacher, *batch_args], steps, warmup=1)
  return steps * batch / sum(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--crop", type=int, default=224)
  parser.add_argument("--image-size", type=int, default=400, help="side of the JPEGs written")
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--input-batches", type=int, default=6)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images, args.image_size)
    decoded = input_rate(root, args.crop, args.batch, args.threads, args.input_batches)
  consumed = step_rate(args.model, args.crop, args.batch, args.steps) if args.steps else None
  print(json.dumps({
      "case": "stream", "model": args.model, "crop": args.crop, "image_size": args.image_size,
      "batch": args.batch, "threads": args.threads, "cores": os.cpu_count(),
      "device": harness.device_name(), "input_images_per_s": round(decoded, 1),
      "step_images_per_s": None if consumed is None else round(consumed, 1),
      "input_bound": None if consumed is None else bool(decoded < consumed)}), flush=True)


if __name__ == "__main__":
  main()
