"""Building blocks shared by the model zoo."""

import flax.linen as nn

# Every convolution of the zoo starts from PyTorch's kaiming_normal_(mode='fan_out'), as the
# torchvision / pytorch-classification ResNets and the CIFAR VGG code initialize theirs:
# N(0, 2 / fan_out), fan_out = kernel height * width * output channels. JAX's 'normal' is
# untruncated, like PyTorch's.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
