"""CIFAR-10: the setup of configs/cifar_kd.py (3x PreResNet-56 -> PreResNet-56, tau 4, paper recipes).

  python run.py --config=configs/cifar10_kd.py --workdir=runs/c10
  # the JPEG copy of CIFAR-10 shipped in ../shared/data (lossy: accuracies are not exactly comparable to
  # published CIFAR-10 numbers), with a short schedule that proves the real-data path on a CPU:
  python run.py --config=configs/cifar10_kd.py --workdir=runs/c10_short \
      --config.data.source=image_folder --config.data.path=../shared/data/cifar10_jpeg_q75.tar.gz \
      --config.teacher.epochs=1 --config.student.epochs=1 \
      --config.teacher.model.depth=20 --config.student.model.depth=20

Data: as configs/cifar_kd.py (data.source 'auto': a prepared tfds `cifar10`, else
cifar-10-python.tar.gz downloaded once into the cache), the original python pickles
(--config.data.source=cifar_pickle --config.data.path=.../cifar-10-batches-py), or an image folder.
"""

from configs import cifar_kd


def get_config():
  config = cifar_kd.get_config()
  config.data.name = "cifar10"
  return config
