"""FitNet, AT, SP, NST, VID, PKT, RKD and CC (kd_jax.methods) against NumPy transcriptions: the loss
and its gradient w.r.t. the student's logits, the student's features and the method's params, in
float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import methods_numpy as npm
from kd_jax.methods import AT, CC, NST, PKT, RKD, SP, VID, FitNet, MethodInputs

# (batch, student stages (channels, size), teacher stages, pooled widths): equal sizes, and a
# student twice as wide in pixels as the teacher (the maps are pooled to the smaller).
LAYOUTS = [
    (4, ((3, 4), (5, 2)), ((4, 4), (6, 2)), (5, 6)),
    (5, ((2, 8), (3, 4)), ((3, 4), (4, 2)), (3, 4)),
]
CLASSES = 4


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def _maps(rng, batch, stages, pooled, positive):
  maps = [rng.normal(size=(batch, size, size, channels)) for channels, size in stages]
  if positive:  # post-ReLU-like and away from the kink of |f| at 0
    maps = [np.abs(m) + 0.1 for m in maps]
  return tuple(jnp.asarray(m) for m in maps) + (jnp.asarray(rng.normal(size=(batch, pooled))),)


def _inputs(seed, layout, positive=False):
  batch, student_stages, teacher_stages, (student_pooled, teacher_pooled) = layout
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, CLASSES, batch)
  labels[0] = -1
  return MethodInputs(
      student_logits=jnp.asarray(rng.normal(size=(batch, CLASSES))),
      teacher_logits=jnp.asarray(rng.normal(size=(batch, CLASSES))),
      labels=jnp.asarray(labels, jnp.int32),
      student_features=_maps(rng, batch, student_stages, student_pooled, positive),
      teacher_features=_maps(rng, batch, teacher_stages, teacher_pooled, positive))


def _check(method, inputs, numpy_distill):
  """Loss and gradient of `method` against ce_weight * CE + numpy_distill(point, teacher maps).

  The point is {'params', 'logits', 'features'}: the method's params (float64), the student's
  logits and its feature tuple."""
  params, state = method.init(jax.random.key(0), inputs)
  params = npm.to_float64(params)
  point = {"params": params, "logits": inputs.student_logits, "features": inputs.student_features}
  teacher = npm.to_numpy(inputs.teacher_features)
  labels = np.asarray(inputs.labels)

  def jax_loss(p):
    moved = inputs.replace(student_logits=p["logits"], student_features=p["features"])
    loss, new_state, metrics = method.loss(p["params"], state, moved, jax.random.key(1))
    return loss, (new_state, metrics)

  def numpy_loss(p):
    p = npm.to_numpy(p)
    return (method.ce_weight * npm.labelled_ce(p["logits"], labels)
            + numpy_distill(p["params"], p["features"], teacher))

  new_state, metrics = npm.check_value_and_gradient(jax_loss, numpy_loss, point)
  np.testing.assert_allclose(metrics["ce"] + metrics["distill"], numpy_loss(point), rtol=1e-9)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  return params


# FitNet: the hint regressor's three convolutions, chosen by the two maps' heights.
@pytest.mark.parametrize("student_size,teacher_size", [(4, 4), (8, 4), (2, 4), (5, 3)])
def test_fitnet_matches_numpy(student_size, teacher_size):
  layout = (4, ((2, 4), (3, student_size)), ((2, 4), (5, teacher_size)), (3, 4))
  method = FitNet(hint_stage=2, feat_weight=2.0, ce_weight=0.5)

  def distill(params, student, teacher):
    x, conv = student[1], params["conv"]
    if student_size == 2 * teacher_size:
      y = npm.conv2d(x, conv["kernel"], conv["bias"], stride=2, padding=1)
    elif 2 * student_size == teacher_size:
      y = npm.conv_transpose2d(x, conv["kernel"], conv["bias"], stride=2, padding=1)
    else:
      assert conv["kernel"].shape[:2] == (1 + student_size - teacher_size,) * 2
      y = npm.conv2d(x, conv["kernel"], conv["bias"])
    y = np.maximum(npm.batch_norm_train(y, params["norm"]["scale"], params["norm"]["bias"]), 0)
    return 2.0 * np.mean((y - teacher[1]) ** 2)

  params = _check(method, _inputs(0, layout), distill)
  if student_size == teacher_size:
    assert params["conv"]["kernel"].shape == (1, 1, 3, 5)  # the 1x1 regressor


def _np_attention(f, p):
  return npm.l2_normalize(np.mean(np.abs(f) ** p, axis=-1).reshape(len(f), -1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_at_matches_numpy(layout):
  def distill(params, student, teacher):
    total = 0.0
    for s, t in zip(student[:-1], teacher[:-1]):
      s, t = npm.pool_to_smaller(s, t)
      total += np.mean((_np_attention(s, 2) - _np_attention(t, 2)) ** 2)
    return 1000.0 * total

  _check(AT(), _inputs(1, layout, positive=True), distill)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sp_matches_numpy(layout):
  def similarity(f):
    flat = f.reshape(len(f), -1)
    return npm.l2_normalize(flat @ flat.T, axis=1)

  def distill(params, student, teacher):
    batch = len(student[0])
    return 3000.0 * np.sum((similarity(teacher[-2]) - similarity(student[-2])) ** 2) / batch**2

  _check(SP(), _inputs(2, layout), distill)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nst_matches_numpy(layout):
  def channels(f):
    per_channel = np.stack([f[..., c].reshape(len(f), -1) for c in range(f.shape[-1])], axis=1)
    return npm.l2_normalize(per_channel)

  def mean_kernel(a, b):
    return np.mean([(a[n, i] @ b[n, j]) ** 2 for n in range(len(a))
                    for i in range(a.shape[1]) for j in range(b.shape[1])])

  def distill(params, student, teacher):
    total = 0.0
    for s, t in zip(student[:-1], teacher[:-1]):
      s, t = npm.pool_to_smaller(s, t)
      s, t = channels(s), channels(t)
      total += mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)
    return 50.0 * total

  _check(NST(), _inputs(3, layout), distill)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vid_matches_numpy(layout):
  method = VID(init_pred_var=2.0, feat_weight=0.5)

  def distill(params, student, teacher):
    total = 0.0
    for i, (s, t) in enumerate(zip(student[:-1], teacher[:-1])):
      s, t = npm.pool_to_smaller(s, t)
      kernels = [params[f"regressor_{i}"][f"Conv_{k}"]["kernel"][0, 0] for k in range(3)]
      mean = np.maximum(np.maximum(s @ kernels[0], 0) @ kernels[1], 0) @ kernels[2]
      variance = np.log1p(np.exp(params[f"log_scale_{i}"])) + 1e-5
      total += np.mean(0.5 * ((mean - t) ** 2 / variance + np.log(variance)))
    return 0.5 * total

  params = _check(method, _inputs(4, layout), distill)
  np.testing.assert_allclose(np.log1p(np.exp(params["log_scale_0"])) + 1e-5, 2.0, rtol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pkt_matches_numpy(layout):
  eps = 1e-7

  def conditionals(f):
    unit = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
    kernel = (unit @ unit.T + 1) / 2
    return kernel / kernel.sum(axis=1, keepdims=True)

  def distill(params, student, teacher):
    p_s, p_t = conditionals(student[-1]), conditionals(teacher[-1])
    return 30000.0 * np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))

  _check(PKT(), _inputs(5, layout), distill)


def _np_huber(x):
  return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rkd_matches_numpy(layout):
  def distances(e):
    n = len(e)
    d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
    return d / (d.sum() / (n * (n - 1)))

  def angles(e):
    n = len(e)
    unit = np.zeros((n, n, e.shape[1]))
    for i in range(n):
      for j in range(n):
        if i != j:
          unit[i, j] = (e[j] - e[i]) / np.linalg.norm(e[j] - e[i])
    return np.array([[[unit[i, j] @ unit[i, k] for k in range(n)] for j in range(n)]
                     for i in range(n)])

  def distill(params, student, teacher):
    s, t = student[-1], teacher[-1]
    return (25.0 * np.mean(_np_huber(distances(s) - distances(t)))
            + 50.0 * np.mean(_np_huber(angles(s) - angles(t))))

  _check(RKD(), _inputs(6, layout), distill)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cc_matches_numpy(layout):
  def distill(params, student, teacher):
    e_s = student[-1] @ params["student_embed"]["kernel"] + params["student_embed"]["bias"]
    e_t = teacher[-1] @ params["teacher_embed"]["kernel"] + params["teacher_embed"]["bias"]
    delta = np.abs(e_s - e_t)
    return 0.02 * np.mean([delta[b] @ delta[b + 1] for b in range(len(delta) - 1)])

  params = _check(CC(embed_dim=6), _inputs(7, layout), distill)
  assert params["student_embed"]["kernel"].shape == (layout[3][0], 6)
  assert params["teacher_embed"]["kernel"].shape == (layout[3][1], 6)
