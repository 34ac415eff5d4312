"""Per-level top-k selection and class-wise NMS of dense detectors vs torchvision's code path
(``RetinaNet.postprocess_detections``: threshold, ``topk``, ``batched_nms``), plus hand-computed cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torchvision.ops import batched_nms as tv_batched_nms  # noqa: E402

from jaxdet.modeling.heads.dense_postprocess import concat_levels, nms_and_keep, select_topk_per_level  # noqa: E402


def _tv_select(scores, k, thresh):
    """torchvision's per-level selection (retinanet.py postprocess_detections)."""
    s = torch.from_numpy(scores).flatten()
    keep = s > thresh
    s = s[keep]
    idx = torch.where(keep)[0]
    s, order = s.topk(min(k, idx.numel()))
    idx = idx[order]
    c = scores.shape[1]
    return (idx // c).numpy(), (idx % c).numpy(), s.numpy()


@pytest.mark.parametrize("n,c,k,thresh", [(50, 7, 20, 0.05), (50, 7, 1000, 0.5), (3, 2, 1000, 0.0), (40, 3, 5, 0.99)])
def test_select_topk_matches_torchvision(n, c, k, thresh):
    rng = np.random.default_rng(n + k)
    scores = rng.random((n, c)).astype(np.float32)
    loc, cls, sc, valid = jax.device_get(select_topk_per_level(jnp.asarray(scores), k, thresh))
    assert loc.shape == (min(k, n * c),) and loc.dtype == np.int32 and valid.dtype == bool
    t_loc, t_cls, t_sc = _tv_select(scores, k, thresh)
    m = len(t_sc)
    assert valid.sum() == m and valid[:m].all()
    np.testing.assert_array_equal(loc[:m], t_loc)
    np.testing.assert_array_equal(cls[:m], t_cls)
    np.testing.assert_array_equal(sc[:m], t_sc)
    np.testing.assert_array_equal(sc[m:], 0.0)


def test_select_topk_hand_case():
    scores = jnp.array([[0.1, 0.9], [0.04, 0.3], [0.05, 0.6]])
    loc, cls, sc, valid = jax.device_get(select_topk_per_level(scores, 4, 0.05))
    np.testing.assert_array_equal(loc, [0, 2, 1, 0])
    np.testing.assert_array_equal(cls, [1, 1, 1, 0])
    np.testing.assert_allclose(sc, [0.9, 0.6, 0.3, 0.1])
    assert valid.all()
    _, _, sc, valid = jax.device_get(select_topk_per_level(scores, 6, 0.05))  # 0.05 itself is not > 0.05
    assert valid.tolist() == [True] * 4 + [False] * 2 and sc[4:].tolist() == [0, 0]
    with pytest.raises(ValueError):
        select_topk_per_level(jnp.zeros((3,)), 2, 0.0)


def _random_candidates(rng, n, num_classes=4, span=200.0):
    xy = rng.uniform(0, span, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.random(n).astype(np.float32), rng.integers(0, num_classes, n).astype(np.int64)


@pytest.mark.parametrize("n,d,trick", [(300, 50, False), (300, 500, True), (1200, 300, "torchvision_cpu"),
                                       (600, 300, "torchvision_cpu")])
def test_nms_and_keep_matches_torchvision(n, d, trick):
    rng = np.random.default_rng(n)
    boxes, scores, classes = _random_candidates(rng, n)
    valid = rng.random(n) < 0.9
    ref = tv_batched_nms(torch.from_numpy(boxes[valid]), torch.from_numpy(scores[valid]),
                         torch.from_numpy(classes[valid]), 0.5)[:d].numpy()
    out = jax.device_get(nms_and_keep(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes),
                                      jnp.asarray(valid), 0.5, d, coordinate_trick=trick))
    m = len(ref)
    assert out["boxes"].shape == (d, 4) and out["classes"].dtype == np.int32
    assert out["valid"].sum() == m and out["valid"][:m].all()
    np.testing.assert_array_equal(out["boxes"][:m], boxes[valid][ref])
    np.testing.assert_array_equal(out["scores"][:m], scores[valid][ref])
    np.testing.assert_array_equal(out["classes"][:m], classes[valid][ref])
    np.testing.assert_array_equal(out["scores"][m:], 0.0)


def test_nms_and_keep_hand_case():
    boxes = jnp.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]], jnp.float32)
    scores = jnp.array([0.9, 0.8, 0.7, 0.95])
    classes = jnp.array([0, 0, 1, 0])
    valid = jnp.array([True, True, True, False])
    out = jax.device_get(nms_and_keep(boxes, scores, classes, valid, 0.5, 3))
    # box 1 (IoU 9/11 with box 0, same class) is suppressed; box 2 is another class; box 3 is invalid
    np.testing.assert_allclose(out["scores"], [0.9, 0.7, 0.0])
    np.testing.assert_array_equal(out["classes"], [0, 1, 0])
    assert out["valid"].tolist() == [True, True, False]
    with pytest.raises(ValueError):
        nms_and_keep(boxes, scores, classes, valid, 0.5, 3, coordinate_trick="gpu")


def test_concat_levels():
    a = (jnp.zeros((2, 4)), jnp.ones(2))
    b = (jnp.ones((3, 4)), jnp.zeros(3))
    boxes, scores = concat_levels([a, b])
    assert boxes.shape == (5, 4) and scores.tolist() == [1, 1, 0, 0, 0]
