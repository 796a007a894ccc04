"""ImageNet: m ResNet-50 teachers distilled into a ResNet-50 (Stanton et al. 2021, Table 2), streamed.

The paper's recipe for ImageNet: 90 epochs, batch 1024, a 5-epoch linear warm-up to lr 0.1 then
cosine decay, students without weight decay; m = 1, 3, 5 teachers (the variants). The original code
(samuelstanton/gnosis) has no ImageNet config, so the rest is the standard torchvision ResNet-50 recipe:
SGD momentum 0.9, teachers' weight decay 1e-4, random-resized 224x224 crops + horizontal flips,
evaluation on the center 224x224 crop of the image resized to 256. The paper does not state Table 2's
temperature; tau = 1 (its ensemble-size experiment's) is used, --config.distill.temperature=4 is the
other setting the paper studies. The data streams from disk (data.pipeline auto picks 'stream':
ImageNet's images differ in size and are far larger than memory), decoded and cropped on the host.

Paper (teacher acc, student acc, test agreement, test KL) for m = 1 / 3 / 5:
(.748 .753 .855 .217) (.764 .755 .878 .157) (.767 .756 .884 .142).

  python run.py --config=configs/imagenet_kd.py:m5 --workdir=runs/imagenet/m5 \
      --config.data.data_dir=/data/tensorflow_datasets
  python sweep.py --config=configs/imagenet_kd.py --workdir=runs/imagenet --seeds=0

Data: tfds `imagenet2012` prepared as array_record in --config.data.data_dir (README, "ImageNet"), or
an image folder: --config.data.source=image_folder --config.data.path=/data/imagenet
--config.data.test_split=val (root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG).
On multi-host TPU slices add --distributed: each process reads its own rows of every batch.
"""

from configs.paper import with_variant
from kd_jax import config as kd_config

OVERRIDES = {f"m{m}": {"teacher.ensemble_size": m} for m in (1, 3, 5)}
VARIANTS = tuple(OVERRIDES)


def get_config(variant="m5"):
  config = kd_config.default_config()
  config.data.name = "imagenet2012"
  config.data.source = "tfds"
  config.data.test_split = "validation"
  config.data.pipeline = "auto"  # streams: ImageNet's images differ in size
  config.data.augment = "none"  # on the device; crops and flips happen on the host (data.stream)
  config.data.stream.crop_size = 224

  def imagenet_optimizer(weight_decay):
    return kd_config.optimizer_config(learning_rate=0.1, final_learning_rate=0.0, warmup_epochs=5.0,
                                      momentum=0.9, weight_decay=weight_decay)

  config.teacher.model = kd_config.model_config(name="resnet50")
  config.teacher.epochs = 90
  config.teacher.batch_size = 1024
  config.teacher.members_per_step = 1  # ResNet-50 fills an accelerator; members train one by one
  config.teacher.optimizer = imagenet_optimizer(1e-4)

  config.student.model = kd_config.model_config(name="resnet50")
  config.student.epochs = 90
  config.student.batch_size = 1024
  config.student.optimizer = imagenet_optimizer(0.0)

  config.distill.temperature = 1.0
  config.distill.alpha = 0.0
  # Not available on streamed input (they need the dataset on the device).
  config.evaluation.augmented_batches = 0
  config.eval_batch_size = 1024
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  return with_variant(config, OVERRIDES, variant)
