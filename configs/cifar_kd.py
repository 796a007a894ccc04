"""CIFAR-100: a 3x PreResNet-56 ensemble distilled into a PreResNet-56 (Stanton et al. 2021, section 3).

The paper's recipes: teachers 200 epochs, batch 256, SGD momentum 0.9, weight decay 1e-4, cosine lr
0.1 -> 0; student 300 epochs, batch 128, SGD Nesterov 0.9, weight decay 1e-4, cosine lr 5e-2 -> 1e-6;
random crop (pad 4) + horizontal flip; tau = 4, alpha = 0 (pure distillation). Inputs are mapped to
[-1, 1] as the original code's 'unitcube' transform does (data.normalization; kd_jax's own default
z-scores each channel: --config.data.normalization=standardize).

Sources: the teacher numbers (200 epochs, batch 256, lr 0.1) follow the paper's text and the archived
teacher run of the original code; gnosis at HEAD trains teachers with its student block (300 epochs,
lr 0.05 Nesterov, batch 128) unless a config overrides it, which we do not follow. The student
numbers follow both the paper and the original code. PreResNet-56 uses the
bottleneck blocks of the paper's code. Expect test agreement in the low-to-mid 80s (the paper reports
84.5 % for 5 teachers; --config.teacher.ensemble_size=5 for that setting).

  python run.py --config=configs/cifar_kd.py --workdir=runs/c100
  # reuse trained teachers for another student (here tau = 1):
  python run.py --config=configs/cifar_kd.py --workdir=runs/c100_tau1 \
      --config.teacher.load_from=runs/c100 --config.distill.temperature=1

Data (data.source 'auto', kd_jax/data/download.py): a tensorflow-datasets `cifar100` prepared as
array_record in --config.data.data_dir (default ~/tensorflow_datasets), else the original python
pickles from the download cache (~/.cache/kd_jax/datasets, or $KD_JAX_DATASETS), where the first run
downloads cifar-100-python.tar.gz (161 MB) and checks its published md5. Offline:
--config.data.download=false, and --config.data.source=cifar_pickle --config.data.path=DIR for a
cifar-100-python folder already here.
"""

from kd_jax import config as kd_config


def get_config():
  config = kd_config.default_config()
  config.data.name = "cifar100"
  config.data.source = "auto"  # the copy on disk, else downloaded once
  config.data.augment = "crop_flip"
  config.data.normalization = "unitcube"  # the original code's 2 x - 1

  config.teacher.model = kd_config.model_config(name="preresnet", depth=56)
  config.teacher.ensemble_size = 3
  config.teacher.epochs = 200
  config.teacher.batch_size = 256
  config.teacher.optimizer = kd_config.optimizer_config(
      learning_rate=0.1, final_learning_rate=0.0, momentum=0.9, weight_decay=1e-4)

  config.student.model = kd_config.model_config(name="preresnet", depth=56)
  config.student.epochs = 300
  config.student.batch_size = 128
  config.student.optimizer = kd_config.optimizer_config(
      learning_rate=5e-2, final_learning_rate=1e-6, momentum=0.9, nesterov=True, weight_decay=1e-4)

  config.distill.temperature = 4.0
  config.distill.alpha = 0.0
  return config
