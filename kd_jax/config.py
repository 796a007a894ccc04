"""Defaults shared by every experiment config, and validation of a resolved config.

A config file in configs/ starts from `default_config()` and changes what its experiment needs; every
field is listed here once, with its meaning, so `--config.<key>=value` overrides have one reference
(the augmentation policies' options in config.distill come from kd_jax.augment_policies.DEFAULTS, where
each is explained). The valid values of every choice field are stated here, once; the modules that
implement them import them from here. Importing this module does not import JAX, so that reading and
planning runs (kd_jax/experiments/) stays light.
Where the paper's original code (samuelstanton/gnosis) is the reference, the defaults reproduce it and
our alternatives are named options (model.head, model.pooling, distill.loss, distill.mixup_lambda,
distill.rotate_interpolation, distill.synthetic_batch_norm).
"""

import ml_collections

from kd_jax import augment_policies as policy
from kd_jax.errors import KdJaxError

PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("sgd", "adam")
# Learning-rate schedules (kd_jax/train.py learning_rate_schedule): cosine (the paper's) | step
# (multi-step, the CIFAR-100 distillation benchmark's).
LR_SCHEDULES = ("cosine", "step")
DATA_SPLITS = ("all", "d0", "d1")
STUDENT_INITS = ("random", "interpolate", "teacher_initial")
BATCH_STATS_INITS = ("reestimate", "interpolate")
OOD_MODES = ("append", "replace")
STUDIES = ("kd", "gan")
SYNTHETIC_BATCH_NORMS = ("batch", "running")
# How the members of a stacked ensemble run in one step (kd_jax/ensemble.py).
ENSEMBLE_METHODS = ("auto", "vmap", "unroll", "scan")
# L_KD (kd_jax/losses.py, where each kind's docstring gives its formula): the original code's kinds
# first, then ours.
KD_LOSSES = ("forward_kl", "reverse_ce", "symmetric_kl", "brier", "hard_argmax", "hard_sample",
             "reverse_kl", "symmetric_kl_tau2", "brier_tau2")
# Text sources (kd_jax/data/text.py): token ids instead of images.
TEXT_SOURCES = ("aclimdb", "tfds_text")
# Data paths (kd_jax/data/stream.py): auto streams when the decoded set is too large.
PIPELINES = ("auto", "memory", "stream")
STREAM_TRAIN_AUGMENTS = ("random_resized_crop_flip", "center_crop")
# Distillation methods the fused step runs (kd_jax/distill.py; kd_jax/methods/): the paper's objective,
# the benchmark's logit methods, and its feature methods (FEATURE_METHODS), which read both networks'
# stage features: they need CIFAR-zoo models (CIFAR_ZOO_MODELS) and one teacher.
LOGIT_METHODS = ("kd", "dkd", "dist")
FEATURE_METHODS = ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst", "crd", "ofd", "reviewkd")
DISTILL_METHODS = ("paper", *LOGIT_METHODS, *FEATURE_METHODS)
# The CIFAR-100 benchmark's models (kd_jax/models/cifar_zoo.py), the ones with stage features; OFD's
# teacher also needs a BatchNorm before each stage's ReLU, which the ShuffleNets lack.
CIFAR_ZOO_MODELS = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4",
                    "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2",
                    "ShuffleV1", "ShuffleV2", "ResNet50")
NO_BN_BEFORE_RELU = ("ShuffleV1", "ShuffleV2")
VGG_HEADS = ("dropout_mlp", "linear")  # kd_jax/models/vgg.py
LENET_POOLINGS = ("avg", "max")  # kd_jax/models/lenet.py
MODEL_INITS = ("flax", "torch")  # kd_jax/models/layers.py
NORMALIZATIONS = ("standardize", "unitcube")  # data.normalization, kd_jax/data/placement.py


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name="sgd",  # 'sgd' or 'adam'
      learning_rate=0.1,
      # cosine: from learning_rate to final_learning_rate over the phase | step: learning_rate times
      # decay_factor at each of decay_epochs (the rate of epoch e, counted from 1, is learning_rate *
      # decay_factor^(number of decay_epochs < e); CRD / RepDistiller / mdistiller's CIFAR-100 recipe:
      # 0.1 at 150, 180, 210 of 240 epochs). Both after the optional linear warm-up.
      schedule="cosine",
      final_learning_rate=0.0,  # cosine schedule floor
      decay_epochs=(150, 180, 210),  # step schedule: increasing epochs inside the phase
      decay_factor=0.1,  # step schedule: the factor at each of decay_epochs, in (0, 1]
      warmup_epochs=0.0,  # linear warm-up from 0 to learning_rate, before the schedule
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,  # coupled (PyTorch-style) L2 on all parameters
  ))
  cfg.update(overrides)
  return cfg


def model_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name="preresnet",  # preresnet | lenet5 | vgg16 | digits_cnn | mlp | resnet50 (ImageNet, v1.5) | bilstm (text)
      depth=20,  # preresnet: 6n+2 (basic) or 9n+2 (bottleneck)
      block="auto",  # auto (bottleneck from depth 44, as the paper's code) | basic | bottleneck
      norm="batch",  # batch | layer (preresnet only)
      width=0,  # 0 = the model's default width (bilstm: the LSTM cell size, 70)
      # vgg16 classifier: dropout_mlp (the original: Dropout 0.5, Dense 512, ReLU, twice, then the
      # output layer; 15.29 M parameters at 100 classes) | linear (ours: one Dense layer, 14.77 M)
      head="dropout_mlp",
      pooling="avg",  # lenet5 2x2 pooling: avg (the original) | max (ours)
      # Initial weights: flax (ours: LeCun-normal Dense kernels, zero biases) | torch (the original
      # code's: PyTorch's defaults wherever it sets none, i.e. weights and biases ~ U(+-1/sqrt(fan_in))
      # for lenet5's convolutions and Dense layers and preresnet's output layer; preresnet's
      # convolutions keep their explicit N(0, 2 / fan_out) under both). kd_jax/models/layers.py.
      init="flax",
      embedding_size=128,  # bilstm: token embedding size
      lstm_layers=2,  # bilstm: stacked bidirectional LSTM layers
  ))
  cfg.update(overrides)
  return cfg


def data_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      # cifar10 | cifar100 | mnist | fashion_mnist | svhn_cropped | digits | imdb_reviews (text)
      name="cifar100",
      # tfds | cifar_pickle | idx | svhn_mat | image_folder | digits | auto (data.name wherever it
      # already is: read from data.path, a prepared tfds data_dir or the download cache, else
      # downloaded there: cifar10, cifar100, mnist, fashion_mnist, emnist[/split], svhn_cropped;
      # kd_jax/data/download.py); text (token ids, kd_jax/data/text.py): aclimdb (the aclImdb folder
      # or .tar.gz in data.path) | tfds_text (e.g. imdb_reviews)
      source="tfds",
      path="",  # local directory (or .tar.gz for image_folder) for the non-tfds sources
      data_dir="",  # tensorflow-datasets data_dir ('' = tfds default)
      # source=auto: whether a dataset found nowhere on disk may be downloaded (False, or the
      # environment variable KD_JAX_NO_DOWNLOAD=1, never uses the network), and where downloads are
      # kept ('' = $KD_JAX_DATASETS, else ~/.cache/kd_jax/datasets).
      download=True,
      download_dir="",
      train_size=0,  # keep only the first N training examples (0 = all)
      # How images in [0, 1] reach the models: standardize (ours: per-channel z-scores with the train
      # set's statistics) | unitcube (the original code's: 2 x - 1, into [-1, 1]; the paper configs').
      normalization="standardize",
      # False: every split draw (D0 / D1 halves, teacher.train_examples, distill.train_examples, the
      # appended OOD images) uses data.split_seed alone, the same for every config.seed. True: it
      # uses (data.split_seed, config.seed), so each seed resamples them, as the paper's trials did.
      split_seed_from_seed=False,
      train_split="train",  # tfds split names (a streamed image folder: its split folders)
      test_split="test",
      num_classes=0,  # idx: number of classes (0 = 10, as MNIST / Fashion-MNIST)
      grayscale=False,  # image_folder: decode as 1-channel images
      cache=True,  # image_folder, text: keep decoded arrays in ~/.cache/kd_jax (or $KD_JAX_CACHE)
      # Resize every image to image_size x image_size on the host after loading (bilinear, PIL),
      # e.g. CIFAR-10 as 28x28 out-of-distribution data for Fashion-MNIST; 0 = native size.
      image_size=0,
      # Text sources: each review's first sequence_length tokens, padded at the end; the vocabulary of
      # the train split's tokens seen at least vocab_min_count times, capped at the vocab_size most
      # frequent (0 = no cap). 100 and 10 without a cap are the original code's max_len and min_freq.
      sequence_length=100,
      vocab_min_count=10,
      vocab_size=0,
      # Where the images live during training (ignored for distill.ood_data, always in memory).
      # memory: the whole dataset decoded once and held on every device (augmentation on the
      # device, kd_jax/data/augment.py). stream: read from disk as training goes (tfds array_record
      # or an image folder; grain, kd_jax/data/stream.py and kd_jax/study/streamed.py), decoded and
      # cropped on the host, its position checkpointed, exact resume. auto: stream when the decoded
      # train + test images exceed memory_limit_mb or differ in size (ImageNet), else memory.
      pipeline="auto",
      memory_limit_mb=4096,
      # Streamed runs only: the host augmentation and reader (data.augment still applies on the
      # device, after these; 'none' for the standard ImageNet recipe).
      stream=ml_collections.ConfigDict(dict(
          crop_size=224,  # training crops and evaluation center crops are crop_size x crop_size
          # random_resized_crop_flip (scale [min_crop_scale, 1], aspect [3/4, 4/3], flip p=0.5) |
          # center_crop (no augmentation: the evaluation transform)
          train_augment="random_resized_crop_flip",
          min_crop_scale=0.08,
          eval_crop_ratio=0.875,  # evaluation: shorter side resized to crop_size / ratio, center crop
          threads=16,  # grain reader threads per process, each decoding whole batches
          prefetch_batches=2,  # batches placed on the devices ahead of the step
          # Normalization mean / std from the center crops of this many seeded training images
          # (0 = all).
          statistics_examples=4096,
      )),
  ))
  cfg.update(overrides)
  return cfg


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # fixes teachers (member i uses seed's i-th stream), student and data order
  c.precision = "fp32"  # fp32 | bf16 (bf16 compute; fp32 parameters, optimizer state and loss)
  c.ensemble_method = "auto"  # how stacked teachers run in a step: auto | vmap | unroll | scan
  # What run.py runs: 'kd' (teachers -> student -> evaluation, kd_jax/study/) | 'gan' (an SN-GAN
  # on config.data's train split, kd_jax/gan.py; its generator is distill.synthetic_workdir's).
  c.study = "kd"

  c.data = data_config()
  c.data.augment = "crop_flip"  # teacher-training policy, on device (kd_jax/data/augment.py)
  # Data recycling: a seeded split of the train set into halves D0 / D1 (teacher.data_split and
  # distill.data_split pick 'all', 'd0' or 'd1').
  c.data.split_seed = 0

  c.teacher = ml_collections.ConfigDict(dict(
      model=model_config(depth=56),
      ensemble_size=3,  # m
      members_per_step=0,  # teachers trained together in one compiled step (0 = all m)
      load_from="",  # a workdir (or its teachers/ folder) with trained teachers to reuse
      data_split="all",  # all | d0 | d1: the part of the train set the teachers learn from
      # Teachers learn from a seeded subset of this many examples of their data_split (seeded by
      # data.split_seed; 0 = the whole split), e.g. 200 labelled images (paper section 5, LeNet-5).
      train_examples=0,
      # With train_examples: the same number from each class (train_examples / classes), as the
      # original's StratifiedShuffleSplit; False draws them at random.
      stratify=False,
      epochs=200,
      steps=0,  # if > 0, overrides epochs (short runs, tests)
      batch_size=256,
      optimizer=optimizer_config(learning_rate=0.1, final_learning_rate=0.0),
  ))

  c.student = ml_collections.ConfigDict(dict(
      model=model_config(depth=56),
      # random | interpolate (lambda * teacher + (1 - lambda) * random, self-distillation) |
      # teacher_initial (the teacher's own initial weights; paper Table 1)
      init="random",
      init_lambda=0.0,
      # init=interpolate, as the original code: the learning rate (start and floor of the cosine)
      # scaled by (1 - init_lambda), at least 1e-6. False keeps the configured learning rate.
      init_scale_lr=True,
      # BatchNorm statistics of an interpolated or teacher_initial student: 'reestimate' (the
      # original: one train-mode pass over the teachers' training data) | 'interpolate' (mixed like
      # the weights).
      init_batch_stats="reestimate",
      epochs=300,
      steps=0,
      batch_size=128,
      optimizer=optimizer_config(learning_rate=5e-2, final_learning_rate=1e-6, nesterov=True),
  ))

  c.distill = ml_collections.ConfigDict(dict(
      # The distillation method (DISTILL_METHODS): 'paper' is the paper's objective below
      # (temperature, alpha, loss); the others are the CIFAR-100 benchmark's methods (kd_jax/methods/,
      # each module's docstring gives its formula, source and options; docs/methods.md lists them),
      # with the reference defaults unless method_options changes them, e.g.
      # --config.distill.method_options="{'beta': 2.0}" for DKD. Logit methods: kd, dkd, dist.
      # Feature methods (fitnet, at, sp, cc, vid, rkd, pkt, nst, crd, ofd, reviewkd) read both
      # networks' stage features: CIFAR-zoo models for teacher and student, teacher.ensemble_size=1,
      # the teacher run in every step (cache_teacher_logits does not apply); their own parameters
      # train with the student under its optimizer. The run sets dkd's and reviewkd's
      # steps_per_epoch and crd's num_examples (the distillation set's size).
      method="paper",
      method_options=ml_collections.ConfigDict(),
      temperature=4.0,  # tau, shared by teacher and student (method 'paper')
      alpha=0.0,  # weight of the label NLL; 0 = pure distillation
      # L_KD: one of KD_LOSSES (kd_jax/losses.py, where each kind's docstring gives its formula and
      # whether it is the original code's (losses.ORIGINAL_KD_KINDS, its scaling exactly) or ours).
      loss="forward_kl",  # the paper's Eq. 1
      augment="",  # distillation-data policy, e.g. crop_flip+rotate, mixup, noise ('' = data.augment)
      # The policies' options, with their defaults and meanings stated once in
      # kd_jax.augment_policies.DEFAULTS: rotate_degrees, color_jitter, mixup_alpha, mixup_lambda
      # (batch: one lambda per batch, the original | example: one per image, ours),
      # rotate_interpolation (nearest, the original | bilinear, ours), cutmix_alpha, noise_prob.
      **policy.DEFAULTS,
      data_split="all",  # all | d0 | d1: the part of the train set the student is distilled on
      # > 0: the student is distilled on a seeded subset of this many images of its data_split (the
      # amount of unlabelled distillation data); 0 = the whole split.
      train_examples=0,
      # Out-of-distribution images (e.g. SVHN), used when ood_data.source is set, labelled only by the
      # teachers. ood_mode 'append' (the original code): ood_examples images of a seeded shuffle of
      # ood_data's train split are appended to the distillation set, so every in-distribution image is
      # still seen once per epoch. 'replace': a fraction ood_ratio of each batch is replaced by random
      # OOD images.
      ood_mode="append",
      ood_examples=10000,
      ood_ratio=0.0,
      ood_data=data_config(name="", source=""),
      # Without augmentation of the distillation images (and no per-step OOD draws) the teachers'
      # logits never change: compute them once instead of in every step. Same results up to float
      # rounding; False runs the teachers in every step as with augmented data. Feature methods
      # always run the teacher in the step (they read its features).
      cache_teacher_logits=True,
      # Synthetic distillation data (paper Fig. 4): a trained generator's workdir (a study='gan' run).
      # Each batch then holds floor(synthetic_fraction * batch_size) generator samples (0.2 = 1
      # synthetic : 4 real, the original's synth_ratio), drawn in the step and labelled only by the
      # teachers, after batch_size minus that many real images; epochs count passes over the real
      # images at that smaller real batch, as the original's loader. Needs alpha = 0.
      synthetic_workdir="",
      synthetic_fraction=0.0,
      # The synthetic images' distillation temperature; the original's synth_temp (default 1.0,
      # while the real images use `temperature`).
      synthetic_temperature=1.0,
      # The generator's BatchNorm while sampling: 'batch' (the original: the generator is left in
      # train mode, so it normalizes with the statistics of the synthetic sub-batch) | 'running'
      # (ours: eval mode, the running statistics).
      synthetic_batch_norm="batch",
  ))

  c.evaluation = ml_collections.ConfigDict(dict(
      augmented_batches=10,  # fidelity on this many batches of the distillation stream (0 = skip)
      cka_examples=0,  # linear CKA of stage activations on this many test images (0 = skip)
      # Distill a second student from an independently trained teacher ensemble and report its
      # agreement with the first ensemble: the baseline for reading agreement.
      independent_student=False,
      # The student's test and train metrics also at its start, before distillation
      # (student.start_test_agreement, ...): where its initialization already puts it (in-memory runs).
      student_start=False,
      test_size=0,  # evaluate on the first N test examples (0 = the whole test set; smoke runs only)
      # > 0: the student's test accuracy, NLL, ECE, agreement and KL every this many steps (and at
      # the end) in the progress output and metrics.jsonl ("evaluation": true), for curves over
      # training; 0 = only the final evaluation.
      every_steps=0,
      # After the evaluation: parameters, inference bytes, FLOPs per image, peak memory and the
      # latency at batch 1 and at eval_batch_size of every teacher, the ensemble and the student, and
      # the student's figures as a fraction of the ensemble's (results.json "compression",
      # kd_jax/compression.py; a few seconds). Off, or with test_size > 0, they are left out.
      compression=True,
  ))

  # study='gan': the SN-GAN (kd_jax/gan.py, kd_jax/models/sngan.py); defaults are the original's
  # CIFAR recipe (samuelstanton/gnosis config/image_generation.yaml and density_model/sngan.yaml).
  c.gan = ml_collections.ConfigDict(dict(
      z_dim=128,  # z ~ N(0, I)
      generator_width=256,  # k: channels of every generator block
      discriminator_width=128,  # k: channels of every discriminator block
      steps=100000,  # generator updates
      batch_size=128,  # real images per discriminator update, samples per generator update
      # Discriminator updates per generator update (n_dis), each on the next real batch.
      discriminator_steps=5,
      # Adam for both networks; the rate decays linearly to final_learning_rate over `steps`,
      # stepped with the generator updates (the discriminator's too).
      learning_rate=2e-4,
      final_learning_rate=1e-6,
      beta1=0.0,
      beta2=0.9,
      augment="flip",  # the real images' policy (kd_jax/data/augment.py); the original flips
      sample_grid=64,  # generator samples in the workdir's samples.png at the end (a square number)
  ))

  c.eval_batch_size = 1000
  # Progress line, metrics.jsonl record and TensorBoard scalars: means over the steps since the last
  # one of loss, accuracy (agreement, kl), grad/update/param norms, and the learning rate.
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000  # also saved at the end of each phase and on Ctrl-C / SIGTERM
  # > 0: a jax.profiler trace of this many steps (after the compiling first one) of each phase, in
  # <workdir>/profile/<phase>/ for TensorBoard's profile plugin.
  c.profile_steps = 0
  return c


def _check_choice(value, choices, key):
  if value not in choices:
    raise KdJaxError(f"config.{key}={value!r} is not valid; choose one of {', '.join(choices)}.")


def _check_positive(value, key):
  if not value > 0:
    raise KdJaxError(f"config.{key}={value!r} must be > 0.")


def _check_run(config) -> None:
  """Run-wide choices and the distillation loss's options."""
  _check_choice(config.study, STUDIES, "study")
  _check_choice(config.precision, PRECISIONS, "precision")
  _check_choice(config.ensemble_method, ENSEMBLE_METHODS, "ensemble_method")
  _check_choice(config.distill.loss, KD_LOSSES, "distill.loss")
  _check_choice(config.distill.mixup_lambda, policy.MIXUP_LAMBDAS, "distill.mixup_lambda")
  _check_choice(config.distill.rotate_interpolation, policy.ROTATE_INTERPOLATIONS,
                "distill.rotate_interpolation")


def _check_phases(config) -> None:
  """The teacher and student phases: models, optimizers, batch sizes, schedules."""
  for phase in ("teacher", "student"):
    cfg = config[phase]
    _check_choice(cfg.model.head, VGG_HEADS, f"{phase}.model.head")
    _check_choice(cfg.model.pooling, LENET_POOLINGS, f"{phase}.model.pooling")
    _check_choice(cfg.model.init, MODEL_INITS, f"{phase}.model.init")
    _check_choice(cfg.optimizer.name, OPTIMIZERS, f"{phase}.optimizer.name")
    _check_positive(cfg.batch_size, f"{phase}.batch_size")
    _check_positive(cfg.optimizer.learning_rate, f"{phase}.optimizer.learning_rate")
    if cfg.steps < 0:
      raise KdJaxError(f"config.{phase}.steps={cfg.steps} must be >= 0 (0 = train for "
                       f"config.{phase}.epochs).")
    if cfg.steps == 0:
      _check_positive(cfg.epochs, f"{phase}.epochs")
    _check_schedule(cfg, phase)
  _check_positive(config.teacher.ensemble_size, "teacher.ensemble_size")
  _check_positive(config.distill.temperature, "distill.temperature")
  _check_positive(config.eval_batch_size, "eval_batch_size")
  _check_positive(config.log_every_steps, "log_every_steps")
  _check_positive(config.checkpoint_every_steps, "checkpoint_every_steps")
  if config.profile_steps < 0:
    raise KdJaxError(f"config.profile_steps={config.profile_steps} must be >= 0 (0 = no trace).")
  if not 0.0 <= config.distill.alpha <= 1.0:
    raise KdJaxError(f"config.distill.alpha={config.distill.alpha} must lie in [0, 1].")


def _check_schedule(cfg, phase: str) -> None:
  """A phase's learning-rate schedule: its name, and a step schedule's decay epochs and factor."""
  optimizer, key = cfg.optimizer, f"{phase}.optimizer"
  _check_choice(optimizer.schedule, LR_SCHEDULES, f"{key}.schedule")
  if optimizer.warmup_epochs < 0:
    raise KdJaxError(f"config.{key}.warmup_epochs={optimizer.warmup_epochs} must be >= 0.")
  if optimizer.schedule != "step":
    return
  epochs = tuple(optimizer.decay_epochs)
  if not epochs or any(not isinstance(e, (int, float)) or isinstance(e, bool) or not e > 0
                       for e in epochs) or list(epochs) != sorted(set(epochs)):
    raise KdJaxError(f"config.{key}.decay_epochs={epochs!r} must be increasing epochs > 0, e.g. "
                     "(150, 180, 210).")
  if cfg.steps == 0 and epochs[-1] >= cfg.epochs:
    raise KdJaxError(f"config.{key}.decay_epochs={epochs!r} must end before config.{phase}.epochs="
                     f"{cfg.epochs}; a later decay never takes effect.")
  if not 0.0 < optimizer.decay_factor <= 1.0:
    raise KdJaxError(f"config.{key}.decay_factor={optimizer.decay_factor} must lie in (0, 1].")


def _check_student_init(config) -> None:
  """Data splits and the student's initialization."""
  _check_choice(config.teacher.data_split, DATA_SPLITS, "teacher.data_split")
  _check_choice(config.distill.data_split, DATA_SPLITS, "distill.data_split")
  _check_choice(config.student.init, STUDENT_INITS, "student.init")
  if not 0.0 <= config.student.init_lambda <= 1.0:
    raise KdJaxError(f"config.student.init_lambda={config.student.init_lambda} must lie in [0, 1].")
  _check_choice(config.student.init_batch_stats, BATCH_STATS_INITS, "student.init_batch_stats")
  if config.student.init != "random" and (
      config.student.model.to_dict() != config.teacher.model.to_dict()):
    raise KdJaxError(f"config.student.init={config.student.init!r} needs self-distillation: set "
                     "config.student.model equal to config.teacher.model.")


def _check_distill_method(config) -> None:
  """The distillation method and what it can be combined with."""
  method = config.distill.method
  _check_choice(method, DISTILL_METHODS, "distill.method")
  if method in FEATURE_METHODS:
    _check_feature_method(config, method)
  if method == "paper" and config.distill.method_options.to_dict():
    raise KdJaxError("config.distill.method_options set the options of a benchmark method; with "
                     "config.distill.method='paper' use distill.temperature, alpha and loss.")
  if method != "paper" and config.distill.synthetic_fraction > 0:
    raise KdJaxError(f"synthetic images are distilled at their own temperature by the paper's "
                     f"objective only; use config.distill.method='paper' (not {method!r}) with "
                     "config.distill.synthetic_workdir.")


def _check_feature_method(config, method: str) -> None:
  """What a feature method needs: one teacher, stage features, per-row indices (CRD)."""
  if config.teacher.ensemble_size > 1:
    raise KdJaxError(f"config.distill.method={method!r} distils the features of one teacher; set "
                     "config.teacher.ensemble_size=1 or use a logit method (kd, dkd, dist).")
  for phase in ("teacher", "student"):
    name = config[phase].model.name
    if name not in CIFAR_ZOO_MODELS:
      raise KdJaxError(f"config.distill.method={method!r} reads stage features, which "
                       f"config.{phase}.model.name={name!r} does not return; use a CIFAR-zoo model "
                       f"({', '.join(CIFAR_ZOO_MODELS)}) or a logit method (kd, dkd, dist).")
  if method == "ofd" and config.teacher.model.name in NO_BN_BEFORE_RELU:
    raise KdJaxError(f"config.distill.method='ofd' takes its margins from the BatchNorm before "
                     f"each teacher stage's ReLU, which config.teacher.model.name="
                     f"{config.teacher.model.name!r} does not have; use another teacher.")
  if method == "crd" and config.distill.ood_data.source and config.distill.ood_mode == "replace":
    raise KdJaxError("config.distill.method='crd' keeps a memory row per distillation example; "
                     "OOD rows drawn by config.distill.ood_mode='replace' have none: use "
                     "ood_mode='append'.")


def _check_extra_distillation_data(config) -> None:
  """Out-of-distribution and synthetic distillation images."""
  _check_choice(config.distill.ood_mode, OOD_MODES, "distill.ood_mode")
  if not 0.0 <= config.distill.ood_ratio < 1.0:
    raise KdJaxError(f"config.distill.ood_ratio={config.distill.ood_ratio} must lie in [0, 1).")
  ood = config.distill.ood_data.source
  if config.distill.ood_ratio > 0 and not (ood and config.distill.ood_mode == "replace"):
    raise KdJaxError("config.distill.ood_ratio > 0 needs config.distill.ood_mode='replace' and "
                     "config.distill.ood_data.source (and name, path or data_dir) naming the "
                     "out-of-distribution dataset.")
  if ood and config.distill.ood_mode == "replace" and not config.distill.ood_ratio > 0:
    raise KdJaxError("config.distill.ood_mode='replace' needs config.distill.ood_ratio in (0, 1).")
  if ood and config.distill.ood_mode == "append" and not config.distill.ood_examples > 0:
    raise KdJaxError("config.distill.ood_mode='append' needs config.distill.ood_examples > 0.")
  if ood and config.distill.alpha > 0:
    raise KdJaxError("out-of-distribution images have no labels: use config.distill.alpha=0 with "
                     "config.distill.ood_data.")
  synthetic = config.distill.synthetic_fraction
  if not 0.0 <= synthetic < 1.0:
    raise KdJaxError(f"config.distill.synthetic_fraction={synthetic} must lie in [0, 1).")
  if bool(synthetic > 0) != bool(config.distill.synthetic_workdir):
    raise KdJaxError("synthetic distillation data needs both config.distill.synthetic_workdir (a "
                     "trained generator's workdir) and config.distill.synthetic_fraction > 0.")
  if synthetic > 0 and config.distill.alpha > 0:
    raise KdJaxError("synthetic images have no labels: use config.distill.alpha=0 with "
                     "config.distill.synthetic_workdir.")
  if synthetic > 0 and config.distill.ood_mode == "replace" and ood:
    raise KdJaxError("config.distill.synthetic_fraction and config.distill.ood_mode='replace' both "
                     "replace part of each batch; use one of them.")
  _check_positive(config.distill.synthetic_temperature, "distill.synthetic_temperature")
  _check_choice(config.distill.synthetic_batch_norm, SYNTHETIC_BATCH_NORMS,
                "distill.synthetic_batch_norm")


def _check_evaluation(config) -> None:
  """The evaluation's sizes."""
  if config.evaluation.test_size < 0:
    raise KdJaxError(f"config.evaluation.test_size={config.evaluation.test_size} must be >= 0 "
                     "(0 = the whole test set).")
  for key in ("augmented_batches", "cka_examples", "every_steps"):
    if config.evaluation[key] < 0:
      raise KdJaxError(f"config.evaluation.{key}={config.evaluation[key]} must be >= 0 (0 = skip).")


def _check_data(config) -> None:
  """The data: subsets, image size, text, the streamed pipeline."""
  if config.teacher.train_examples < 0:
    raise KdJaxError(f"config.teacher.train_examples={config.teacher.train_examples} must be >= 0 "
                     "(0 = the teachers' whole data split).")
  if config.distill.train_examples < 0:
    raise KdJaxError(f"config.distill.train_examples={config.distill.train_examples} must be >= 0 "
                     "(0 = the student's whole data split).")
  _check_choice(config.data.normalization, NORMALIZATIONS, "data.normalization")
  for key, cfg in (("data", config.data), ("distill.ood_data", config.distill.ood_data)):
    if cfg.source == "auto" and not cfg.name:
      raise KdJaxError(f"config.{key}.source='auto' finds or downloads the dataset {key}.name "
                       f"names; set it, e.g. --config.{key}.name=cifar100.")
  if config.data.image_size < 0:
    raise KdJaxError(f"config.data.image_size={config.data.image_size} must be >= 0 (0 = native).")
  if config.data.source in TEXT_SOURCES:
    for key, policy_name in (("data.augment", config.data.augment),
                             ("distill.augment", config.distill.augment or "none")):
      if policy.parse_policy(policy_name):
        raise KdJaxError(f"config.{key}={policy_name!r} transforms images; text data (data.source="
                         f"{config.data.source!r}) needs config.data.augment='none' and "
                         "config.distill.augment=''.")
  _check_choice(config.data.pipeline, PIPELINES, "data.pipeline")
  _check_choice(config.data.stream.train_augment, STREAM_TRAIN_AUGMENTS,
                "data.stream.train_augment")
  _check_positive(config.data.memory_limit_mb, "data.memory_limit_mb")
  for key in ("crop_size", "threads", "prefetch_batches"):
    _check_positive(config.data.stream[key], f"data.stream.{key}")
  if config.data.stream.statistics_examples < 0:
    raise KdJaxError("config.data.stream.statistics_examples must be >= 0 (0 = every train image).")
  if not 0.0 < config.data.stream.min_crop_scale <= 1.0:
    raise KdJaxError("config.data.stream.min_crop_scale must lie in (0, 1].")
  if not 0.0 < config.data.stream.eval_crop_ratio <= 1.0:
    raise KdJaxError("config.data.stream.eval_crop_ratio must lie in (0, 1].")


def _check_gan(config) -> None:
  """Teacher groups and the SN-GAN study's fields."""
  if config.teacher.members_per_step < 0:
    raise KdJaxError("config.teacher.members_per_step must be >= 0 (0 = all members at once).")
  for key in ("z_dim", "generator_width", "discriminator_width", "steps", "batch_size",
              "discriminator_steps", "learning_rate", "final_learning_rate"):
    _check_positive(config.gan[key], f"gan.{key}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises KdJaxError (one line) for values that would fail later or silently mean nothing."""
  _check_run(config)
  _check_phases(config)
  _check_student_init(config)
  _check_distill_method(config)
  _check_extra_distillation_data(config)
  _check_evaluation(config)
  _check_data(config)
  _check_gan(config)
