"""NumPy (float64) building blocks for the tests of kd_jax.methods, written out from their
definitions (PyTorch's semantics), and the gradient check shared by those tests."""

import jax
import jax.numpy as jnp
import numpy as np


def softmax(z, axis=-1):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis=-1):
  z = np.asarray(z, np.float64)
  shifted = z - z.max(axis=axis, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def labelled_ce(logits, labels):
  """Mean NLL over the rows with label >= 0, one row at a time."""
  terms = [-log_softmax(logits[b])[labels[b]] for b in range(len(labels)) if labels[b] >= 0]
  return float(np.mean(terms)) if terms else 0.0


def l2_normalize(x, axis=-1, eps=1e-12):
  norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
  return x / np.maximum(norm, eps)


def conv2d(x, kernel, bias=None, stride=1, padding=0):
  """Cross-correlation of NHWC x with an HWIO kernel, zero padding on each side."""
  x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for a in range(kh):
    for c in range(kw):
      window = x[:, a:a + stride * (out_h - 1) + 1:stride, c:c + stride * (out_w - 1) + 1:stride]
      out += window @ kernel[a, c]
  return out if bias is None else out + bias


def conv_transpose2d(x, kernel, bias, stride, padding):
  """PyTorch's ConvTranspose2d: every input pixel scatters x[i] @ W[a, c] to output
  stride * i + a - padding. `kernel` is flax's transpose_kernel layout (kh, kw, out, in)."""
  kh, kw = kernel.shape[:2]
  batch, height, width, _ = x.shape
  full = np.zeros((batch, (height - 1) * stride + kh, (width - 1) * stride + kw, kernel.shape[2]))
  for i in range(height):
    for j in range(width):
      for a in range(kh):
        for c in range(kw):
          full[:, stride * i + a, stride * j + c] += x[:, i, j] @ kernel[a, c].T
  out_h, out_w = (height - 1) * stride - 2 * padding + kh, (width - 1) * stride - 2 * padding + kw
  return full[:, padding:padding + out_h, padding:padding + out_w] + bias


def batch_norm_train(x, scale, bias, eps=1e-5):
  axes = tuple(range(x.ndim - 1))
  mean, var = x.mean(axis=axes), x.var(axis=axes)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def adaptive_avg_pool(x, size):
  """Output (i, j) averages rows floor(i H / h) .. ceil((i + 1) H / h) - 1, likewise columns."""
  height, width = x.shape[1:3]
  out = np.zeros((x.shape[0], size[0], size[1], x.shape[3]))
  for i in range(size[0]):
    r0, r1 = int(np.floor(i * height / size[0])), int(np.ceil((i + 1) * height / size[0]))
    for j in range(size[1]):
      c0, c1 = int(np.floor(j * width / size[1])), int(np.ceil((j + 1) * width / size[1]))
      out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return out


def pool_to_smaller(s, t):
  if s.shape[1] > t.shape[1]:
    s = adaptive_avg_pool(s, t.shape[1:3])
  elif s.shape[1] < t.shape[1]:
    t = adaptive_avg_pool(t, s.shape[1:3])
  return s, t


def nearest_resize(x, size):
  out = np.zeros((x.shape[0], size[0], size[1], x.shape[3]))
  for i in range(size[0]):
    for j in range(size[1]):
      out[:, i, j] = x[:, int(np.floor(i * x.shape[1] / size[0])),
                       int(np.floor(j * x.shape[2] / size[1]))]
  return out


def to_numpy(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def to_float64(tree):
  """Floating leaves as float64 jax arrays (int leaves kept), for a check under x64."""
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def check_value_and_gradient(jax_fn, numpy_fn, point, seed=0, directions=3, step=1e-6,
                             rtol=1e-6, atol=1e-9):
  """jax_fn(point) -> (loss, aux) against the independent `numpy_fn(point)` -> loss, at `point` (a
  pytree of float64 arrays): the value, and jax.grad against central differences of numpy_fn along
  random directions v, <grad, v> ~ (f(x + h v) - f(x - h v)) / 2h. Returns aux."""
  (value, aux), gradient = jax.jit(jax.value_and_grad(jax_fn, has_aux=True))(point)
  np.testing.assert_allclose(value, numpy_fn(point), rtol=1e-9)
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(to_numpy(point))
  gradient_leaves = jax.tree.leaves(to_numpy(gradient))
  for _ in range(directions):
    direction = [rng.normal(size=leaf.shape) for leaf in leaves]
    plus = treedef.unflatten([x + step * v for x, v in zip(leaves, direction)])
    minus = treedef.unflatten([x - step * v for x, v in zip(leaves, direction)])
    numeric = (numpy_fn(plus) - numpy_fn(minus)) / (2 * step)
    analytic = sum(np.sum(g * v) for g, v in zip(gradient_leaves, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)
  return aux
