"""Datasets in host memory: `load_dataset(cfg)` returns a `Dataset` of uint8 NHWC images and int32 labels
(the text sources: a `kd_jax.data.text.TextDataset` of int32 token ids)."""

from kd_jax.data.sources import Dataset
from kd_jax.data.sources import load_dataset

__all__ = ["Dataset", "load_dataset"]
