"""Datasets in host memory: `load_dataset(cfg)` returns a `Dataset` of uint8 NHWC images and int32 labels."""

from kd_jax.data.sources import Dataset
from kd_jax.data.sources import load_dataset

__all__ = ["Dataset", "load_dataset"]
