"""kd_jax: knowledge distillation research in JAX/Flax (fidelity vs generalization, Stanton et al. 2021)."""

from kd_jax.errors import KdJaxError

__all__ = ["KdJaxError"]
