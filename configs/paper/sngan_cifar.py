"""The SN-GAN whose samples are the `gan` distillation-data policy (Stanton et al. 2021, Fig. 4):
the original code's recipe (samuelstanton/gnosis: config/image_generation.yaml,
config/density_model/sngan.yaml, gnosis/models/sngan.py), trained on the CIFAR training set.

ResNet generator (z = 128, 4x4 -> 32x32 through 3 up-blocks, width 256, BatchNorm, tanh) and
spectrally normalized ResNet discriminator (width 128), hinge loss, 100,000 generator updates with 5
discriminator updates each (batch 128), Adam lr 2e-4 (beta1 0, beta2 0.9) for both, decaying linearly to
1e-6, real images randomly flipped. Variants: cifar100 (the augmentation experiment's data set),
cifar10. Then point configs/paper/augmentation.py's `gan` variant at the workdir:

  python run.py --config=configs/paper/sngan_cifar.py:cifar100 --workdir=runs/sngan_cifar100
  python run.py --config=configs/paper/augmentation.py:gan --workdir=runs/augmentation/gan

The differences from the original are listed in kd_jax/models/sngan.py (zero bias initialization) and
kd_jax/gan.py; the original also reports FID / IS on Inception features, which needs ImageNet weights
we do not ship (kd_jax/fid.py scores samples with our own classifiers instead).
"""

from configs.paper import with_variant
from kd_jax import config as kd_config

OVERRIDES = {
    "cifar100": {"data.name": "cifar100"},
    "cifar10": {"data.name": "cifar10"},
}
VARIANTS = tuple(OVERRIDES)


def get_config(variant=None):
  config = kd_config.default_config()
  config.study = "gan"
  config.data = kd_config.data_config(name="cifar100", source="auto")
  # The generator's defaults in kd_jax/config.py are the original's; stated here as the recipe.
  config.gan.update(dict(z_dim=128, generator_width=256, discriminator_width=128, steps=100000,
                         batch_size=128, discriminator_steps=5, learning_rate=2e-4,
                         final_learning_rate=1e-6, beta1=0.0, beta2=0.9, augment="flip"))
  config.log_every_steps = 500
  config.checkpoint_every_steps = 5000
  return with_variant(config, OVERRIDES, variant or "cifar100")
