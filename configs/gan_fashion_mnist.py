"""A small SN-GAN on Fashion-MNIST (28x28 grayscale): the generator of the laptop suite's `gan`
distillation-data policy (configs/paper/small/distillation_data.py), trained on the same 10,000
training images as the suite's teachers and students.

The original's recipe (configs/paper/sngan_cifar.py: hinge loss, Adam 2e-4 with beta1 0, beta2 0.9
decaying linearly) on the same ResNet blocks, sized for a shared 2-core CPU (about 1.6 s per
generator update there): 7x7 -> 28x28 through 2 up-blocks, widths 32 (generator) and 16
(discriminator), batch 32, 2 discriminator updates per generator update instead of 5, 600 generator
updates instead of 100,000, no flips (the suite trains its classifiers without augmentation). The run
ends with generator/, samples.png and results.json in the workdir.

  python run.py --config=configs/gan_fashion_mnist.py --workdir=runs/gan_fmnist
  python -m kd_jax.fid --generator=runs/gan_fmnist --classifier=<a laptop-suite run>
"""

from configs.paper.small import _base
from kd_jax import config as kd_config


def get_config():
  config = kd_config.default_config()
  config.study = "gan"
  config.data = _base.get_config().data
  config.gan.update(dict(z_dim=128, generator_width=32, discriminator_width=16, steps=600,
                         batch_size=32, discriminator_steps=2, learning_rate=2e-4,
                         final_learning_rate=1e-6, beta1=0.0, beta2=0.9, augment="none"))
  config.log_every_steps = 25
  config.checkpoint_every_steps = 100
  return config
