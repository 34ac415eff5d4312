"""FPN parity with torchvision.ops.FeaturePyramidNetwork (+ LastLevelMaxPool / LastLevelP6P7).

Weights are copied from the torch module through ``convert_torchvision_fpn`` (biases randomised so
they matter); inputs are random with odd, non-halving sizes so the nearest top-down resize is
exercised. Tolerance 1e-5.
"""
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torchvision.ops import FeaturePyramidNetwork  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7  # noqa: E402

from checkpoints_convert.torchvision_backbone import convert_torchvision_fpn  # noqa: E402
from jaxdet.modeling.backbones.fpn import FPN, nearest_resize_indices  # noqa: E402

OUT = 16


def _torch_fpn(in_channels, extra):
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork(in_channels, OUT, extra_blocks=extra).eval()
    with torch.no_grad():
        for name, p in fpn.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return fpn


def _features(levels, channels, sizes, seed=0):
    rng = np.random.RandomState(seed)
    return OrderedDict((f"C{l}", rng.randn(2, c, h, w).astype(np.float32)) for l, c, (h, w) in zip(levels, channels, sizes))


def _run_both(fpn_t, jax_fpn, feats, prefix=""):
    with torch.no_grad():
        ref = fpn_t(OrderedDict((k, torch.from_numpy(v)) for k, v in feats.items()))
    params = convert_torchvision_fpn(fpn_t.state_dict(), prefix=prefix, source="test fpn")
    out = jax.jit(jax_fpn.apply)(params, {k: jnp.asarray(v.transpose(0, 2, 3, 1)) for k, v in feats.items()})
    return [r.numpy().transpose(0, 2, 3, 1) for r in ref.values()], out


# sizes: C5 13x17 and ratios that are not exactly 2 (e.g. 25 -> 50 is, 13 -> 25 is not)
SIZES4 = [(50, 67), (25, 34), (13, 17), (7, 9)]


def test_fpn_maxpool_matches_torchvision():
    chans = [8, 16, 24, 32]
    feats = _features([2, 3, 4, 5], chans, SIZES4)
    ref, out = _run_both(_torch_fpn(chans, LastLevelMaxPool()), FPN(OUT, top_block="maxpool"), feats)
    assert list(out) == ["P2", "P3", "P4", "P5", "P6"]
    assert out["P6"].shape == (2, 4, 5, OUT)
    for r, name in zip(ref, out):
        assert out[name].shape == r.shape
        np.testing.assert_allclose(np.asarray(out[name]), r, atol=1e-5, rtol=1e-5, err_msg=name)


def test_fpn_p6p7_from_c5_matches_torchvision():
    chans = [16, 24, 32]  # C5 channels 32 != OUT: torchvision takes C5
    feats = _features([3, 4, 5], chans, [(25, 34), (13, 17), (7, 9)], seed=1)
    fpn_t = _torch_fpn(chans, LastLevelP6P7(32, OUT))
    assert not fpn_t.extra_blocks.use_P5
    ref, out = _run_both(fpn_t, FPN(OUT, top_block="p6p7", p6p7_in="C5"), feats)
    assert list(out) == ["P3", "P4", "P5", "P6", "P7"]
    assert out["P6"].shape[1:3] == (4, 5) and out["P7"].shape[1:3] == (2, 3)
    for r, name in zip(ref, out):
        np.testing.assert_allclose(np.asarray(out[name]), r, atol=1e-5, rtol=1e-5, err_msg=name)


def test_fpn_p6p7_from_p5_matches_torchvision():
    chans = [16, 24, OUT]  # C5 channels == OUT: torchvision takes P5 (retinanet_resnet50_fpn v1)
    feats = _features([3, 4, 5], chans, [(24, 31), (12, 16), (6, 8)], seed=2)
    fpn_t = _torch_fpn(chans, LastLevelP6P7(OUT, OUT))
    assert fpn_t.extra_blocks.use_P5
    ref, out = _run_both(fpn_t, FPN(OUT, top_block="p6p7", p6p7_in="P5"), feats)
    for r, name in zip(ref, out):
        np.testing.assert_allclose(np.asarray(out[name]), r, atol=1e-5, rtol=1e-5, err_msg=name)
    # and P5 input really differs from C5 input: the C5 variant gives another P6
    _, out_c5 = _run_both(fpn_t, FPN(OUT, top_block="p6p7", p6p7_in="C5"), feats)
    assert np.abs(np.asarray(out_c5["P6"]) - ref[3]).max() > 1e-2


def test_fpn_without_top_block_and_old_key_format():
    chans = [8, 16]
    feats = _features([4, 5], chans, [(13, 17), (5, 6)], seed=3)
    fpn_t = _torch_fpn(chans, None)
    ref, out = _run_both(fpn_t, FPN(OUT, top_block=None), feats)
    assert list(out) == ["P4", "P5"]
    for r, name in zip(ref, out):
        np.testing.assert_allclose(np.asarray(out[name]), r, atol=1e-5, rtol=1e-5, err_msg=name)
    # pre-0.13 torchvision names ("inner_blocks.0.weight") under a detector prefix convert the same
    new = convert_torchvision_fpn(fpn_t.state_dict(), prefix="")
    old_sd = {"backbone.fpn." + k.replace(".0.", "."): v for k, v in fpn_t.state_dict().items()}
    old_sd["backbone.body.conv1.weight"] = np.zeros((1,))  # other prefixes are ignored
    old = convert_torchvision_fpn(old_sd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, new, old)


def test_nearest_indices_match_torch_interpolate():
    for n_in in range(1, 24):
        for n_out in range(1, 50):
            ramp = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
            ref = torch.nn.functional.interpolate(ramp, size=(n_out, 1), mode="nearest").view(-1).long().numpy()
            np.testing.assert_array_equal(nearest_resize_indices(n_in, n_out), ref, err_msg=f"{n_in}->{n_out}")


def test_bad_inputs_raise():
    fpn_t = _torch_fpn([8, 16], LastLevelP6P7(16, OUT))
    sd = dict(fpn_t.state_dict())
    with pytest.raises(ValueError, match="unexpected FPN keys: inner_blocks.0.1.weight"):
        convert_torchvision_fpn({**sd, "inner_blocks.0.1.weight": np.zeros(1)}, prefix="", source="x.pth")
    del sd["layer_blocks.1.0.bias"]
    with pytest.raises(ValueError, match=r"x.pth.*layer_1: needs weight and bias"):
        convert_torchvision_fpn(sd, prefix="", source="x.pth")
    with pytest.raises(ValueError, match="no FPN weights"):
        convert_torchvision_fpn(sd, prefix="backbone.fpn.", source="x.pth")
    feats = {"C3": jnp.zeros((1, 8, 8, 4)), "C5": jnp.zeros((1, 2, 2, 4))}
    with pytest.raises(ValueError, match="consecutive"):
        jax.eval_shape(FPN(OUT).init, jax.random.PRNGKey(0), feats)
    with pytest.raises(ValueError, match="top_block"):
        jax.eval_shape(FPN(OUT, top_block="pool").init, jax.random.PRNGKey(0), {"C5": jnp.zeros((1, 2, 2, 4))})
