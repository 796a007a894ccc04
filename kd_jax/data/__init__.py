"""Datasets in host memory: `load_dataset(cfg)` returns a `Dataset` of uint8 NHWC images and int32 labels
(the text sources: a `kd_jax.data.text.TextDataset` of int32 token ids)."""

from kd_jax.data import sources, text
from kd_jax.data.sources import Dataset
from kd_jax.errors import KdJaxError


def load_dataset(cfg, key: str = "data"):
  """The dataset `cfg` (a `kd_jax.config.data_config()`) describes, from its image or text source;
  `key` is its place in the config ('data', 'distill.ood_data'), for messages. Data that cannot be
  read (permissions) is one KdJaxError naming the file or folder."""
  try:
    if cfg.source in text.SOURCES:
      return text.load_text_dataset(cfg)
    if cfg.source in sources.SOURCES:
      return sources.load_image_dataset(cfg, key)
  except OSError as e:  # a file or folder of the data this user may not read
    raise sources.read_error(e) from e
  raise KdJaxError(f"unknown data.source={cfg.source!r}: use one of "
                   f"{', '.join(sources.SOURCES + text.SOURCES)}")


__all__ = ["Dataset", "load_dataset"]
