"""The names of the augmentation policies and their options, without JAX (config validation reads
them; kd_jax/data/augment.py implements them).

A policy is one name of POLICY_NAMES or several joined by '+', applied left to right, e.g.
'crop_flip+rotate+vflip+color_jitter'; 'all' is the paper's "all combined".
"""

from kd_jax.errors import KdJaxError

# The policies' options and their defaults: the fields of config.distill (kd_jax/config.py takes
# them from here), and the options of a policy made without a config (the teachers').
DEFAULTS = {
    "rotate_degrees": 20.0,  # rotation angle ~ U[-d, d] degrees
    "color_jitter": 0.2,  # brightness, contrast, saturation and hue strength (one number for all)
    "mixup_alpha": 0.0,  # 0: lambda ~ U[0, 1] (the paper); > 0: lambda ~ Beta(a, a)
    "mixup_lambda": "batch",  # batch: one lambda per batch (the original) | example: one per image
    "rotate_interpolation": "nearest",  # nearest (the original, torchvision's default) | bilinear
    "cutmix_alpha": 0.0,  # 0: box area fraction ~ U[0, 1]; > 0: ~ Beta(a, a)
    "noise_prob": 0.2,  # probability that an image is replaced by uniform noise
}

# Choices of the string options; the first is the original code's.
MIXUP_LAMBDAS = ("batch", "example")
ROTATE_INTERPOLATIONS = ("nearest", "bilinear")

# Single policies (kd_jax/data/augment.py builds one op per name) and composite names, expanded before
# building.
SINGLE_POLICIES = ("none", "crop_flip", "flip", "crop", "rotate", "vflip", "color_jitter", "mixup",
                   "cutmix", "noise")
ALIASES = {"all": ("crop_flip", "rotate", "vflip", "color_jitter")}  # the paper's "all combined"
POLICY_NAMES = SINGLE_POLICIES + tuple(ALIASES)


def parse_policy(name: str) -> tuple:
  """'a+b+all' -> the tuple of single ops to apply, left to right; KdJaxError on unknown names."""
  parts = [part.strip() for part in str(name).split("+")]
  ops = []
  for part in parts:
    if part in ALIASES:
      ops.extend(ALIASES[part])
    elif part in POLICY_NAMES:
      ops.append(part)
    else:
      raise KdJaxError(f"unknown augmentation policy {part!r} in {name!r}; valid names: "
                       f"{', '.join(POLICY_NAMES)} (join several with '+').")
  return tuple(op for op in ops if op != "none")
