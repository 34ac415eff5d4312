"""Converted torchvision / MSRA backbones give the reference's features on real coco128 images.

References are torchvision models with ``weights=None``, a fixed seed and randomised BN affine and
running statistics (so FrozenBN is not the identity), in eval mode (BN == FrozenBN). Features are
compared with max|ours - ref| <= 1e-4 * max|ref| per level.
"""
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from torchvision.models._utils import IntermediateLayerGetter  # noqa: E402

from checkpoints_convert.msra import convert_msra_resnet, convert_msra_resnet_file  # noqa: E402
from checkpoints_convert.torchvision_backbone import (  # noqa: E402
    convert_torchvision_fpn,
    convert_torchvision_resnet,
    convert_torchvision_resnet_file,
    load_torchvision_state_dict,
)
from jaxdet.modeling.backbones.fpn import FPN  # noqa: E402
from jaxdet.modeling.backbones.resnet import ResNet  # noqa: E402

torch.set_num_threads(2)

TV_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
TV_STD = np.array([58.395, 57.12, 57.375], np.float32)
MSRA_MEAN_BGR = np.array([103.53, 116.28, 123.675], np.float32)
# Not multiples of 32: every stride-2 layer sees an odd size somewhere (322 -> 161 -> 81 -> 41 -> 21 -> 11).
SIZE = (322, 430)
RETURN = {"layer1": "C2", "layer2": "C3", "layer3": "C4", "layer4": "C5"}


def _images(root, n, size=SIZE):
    """First n coco128 images, RGB float32 0..255, resized (bilinear) to size=(H, W): [n, H, W, 3]."""
    files = sorted((root / "train2017").glob("*.jpg"))[:n]
    assert len(files) == n, f"coco128 at {root} has fewer than {n} images"
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize(size[::-1], Image.BILINEAR), np.float32) for f in files])


def _randomise_norms(model, seed=0):
    """Random BN affine and running stats, so a FrozenBN-equivalent layer is far from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                c = m.weight.shape[0]
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model.eval()


def _nchw(x_nhwc):
    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def _assert_features_close(ours, ref, names):
    for name in names:
        r = ref[name].numpy().transpose(0, 2, 3, 1) if hasattr(ref[name], "numpy") else ref[name]
        o = np.asarray(ours[name])
        assert o.shape == r.shape, (name, o.shape, r.shape)
        scale = np.abs(r).max()
        assert scale > 0
        diff = np.abs(o - r).max()
        assert diff <= 1e-4 * scale, f"{name}: max abs diff {diff} > 1e-4 * {scale}"


_JIT = {}


def _apply_fn(model):
    """One jitted apply per (hashable) module config, shared between tests to compile once."""
    if model not in _JIT:
        _JIT[model] = jax.jit(model.apply)
    return _JIT[model]


@pytest.fixture(scope="module")
def rgb_batch(coco128_root):
    return (_images(coco128_root, 2) - TV_MEAN) / TV_STD  # [2, 322, 430, 3] normalised RGB


def test_resnet50_parity(rgb_batch):
    torch.manual_seed(0)
    tv = _randomise_norms(torchvision.models.resnet50(weights=None))
    with torch.no_grad():
        ref = IntermediateLayerGetter(tv, RETURN)(_nchw(rgb_batch))
    variables = convert_torchvision_resnet(tv.state_dict(), depth=50, source="resnet50 (seed 0)")
    assert "fc" not in variables["params"]
    ours = _apply_fn(ResNet(depth=50))(variables, jnp.asarray(rgb_batch))
    _assert_features_close(ours, ref, ["C2", "C3", "C4", "C5"])


def test_resnext50_32x4d_parity(rgb_batch):
    torch.manual_seed(0)
    tv = _randomise_norms(torchvision.models.resnext50_32x4d(weights=None), seed=1)
    x = rgb_batch[:1, :226, :290]
    with torch.no_grad():
        ref = IntermediateLayerGetter(tv, RETURN)(_nchw(x))
    variables = convert_torchvision_resnet(tv.state_dict(), depth=50, groups=32, width_per_group=4)
    assert variables["params"]["layer1_0"]["conv2"]["kernel"].shape == (3, 3, 4, 128)
    ours = _apply_fn(ResNet(depth=50, groups=32, width_per_group=4))(variables, jnp.asarray(x))
    _assert_features_close(ours, ref, ["C2", "C3", "C4", "C5"])


def test_resnext101_32x8d_parity(rgb_batch):
    """The issue's named ResNeXt (the Caffe2 X-101-32x8d layout in torchvision naming), on a real image crop."""
    torch.manual_seed(0)
    tv = _randomise_norms(torchvision.models.resnext101_32x8d(weights=None), seed=2)
    x = rgb_batch[1:, :192, :256]
    with torch.no_grad():
        ref = IntermediateLayerGetter(tv, RETURN)(_nchw(x))
    variables = convert_torchvision_resnet(tv.state_dict(), depth=101, groups=32, width_per_group=8)
    assert variables["params"]["layer3_22"]["conv2"]["kernel"].shape == (3, 3, 32, 1024)
    ours = _apply_fn(ResNet(depth=101, groups=32, width_per_group=8))(variables, jnp.asarray(x))
    _assert_features_close(ours, ref, ["C2", "C3", "C4", "C5"])


def test_fasterrcnn_backbone_fpn_parity(rgb_batch):
    torch.manual_seed(0)
    det = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    backbone = _randomise_norms(det.backbone, seed=2)
    with torch.no_grad():
        for name, p in backbone.fpn.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
        ref = backbone(_nchw(rgb_batch))  # OrderedDict '0'..'3', 'pool'
    sd = det.state_dict()  # the whole detector: the converters take only their prefix
    body = convert_torchvision_resnet(sd, depth=50, prefix="backbone.body.", source="fasterrcnn_resnet50_fpn")
    fpn_params = convert_torchvision_fpn(sd, prefix="backbone.fpn.", source="fasterrcnn_resnet50_fpn")
    feats = _apply_fn(ResNet(depth=50))(body, jnp.asarray(rgb_batch))
    ours = _apply_fn(FPN(256, top_block="maxpool"))(fpn_params, feats)
    ref = {p: ref[k] for p, k in zip(["P2", "P3", "P4", "P5", "P6"], ["0", "1", "2", "3", "pool"])}
    _assert_features_close(ours, ref, list(ref))


# ---------------------------------------------------------------- MSRA (stride in the 1x1)

_MSRA_BN = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}


def _export_msra(tv, fused=False, eps=1e-5):
    """Write a torchvision ResNet's weights with MSRA/Detectron blob names (hand-written mapping)."""
    blobs = {}
    sd = {k: v.numpy().copy() for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "bn1": "branch2a_bn",
              "bn2": "branch2b_bn", "bn3": "branch2c_bn", "downsample.0": "branch1", "downsample.1": "branch1_bn"}
    norms = {}
    for k, v in sd.items():
        if k.startswith("fc."):
            blobs["fc1000_" + k[3]] = v
            continue
        module, leaf = k.rsplit(".", 1)
        if module == "conv1":
            blobs["conv1_w"] = v
            continue
        if module == "bn1":
            base = "res_conv1_bn"
        else:
            layer, i, rest = module.split(".", 2)
            base = f"res{int(layer[5:]) + 1}_{i}_{branch[rest]}"
        if leaf == "weight" and not base.endswith("_bn"):
            blobs[base + "_w"] = v
            blobs[base + "_w_momentum"] = np.zeros_like(v)
        else:
            norms.setdefault(base, {})[leaf] = v
    for base, bn in norms.items():
        if fused:
            s = bn["weight"] / np.sqrt(bn["running_var"] + eps)
            blobs[base + "_s"], blobs[base + "_b"] = s, bn["bias"] - bn["running_mean"] * s
        else:
            for leaf, v in bn.items():
                blobs[f"{base}_{_MSRA_BN[leaf]}"] = v
    return blobs


def _msra_reference():
    """torchvision resnet50 with every stride moved from the 3x3 to the first 1x1 conv."""
    torch.manual_seed(0)
    tv = _randomise_norms(torchvision.models.resnet50(weights=None), seed=3)
    for layer in (tv.layer2, tv.layer3, tv.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    return tv


def test_msra_stride_in_1x1_parity(coco128_root, tmp_path):
    tv = _msra_reference()
    bgr = (_images(coco128_root, 1)[..., ::-1] - MSRA_MEAN_BGR) / 1.0  # BGR, std 1
    with torch.no_grad():
        ref = IntermediateLayerGetter(tv, RETURN)(_nchw(bgr))
    path = tmp_path / "R-50-random.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": _export_msra(tv)}, f)
    variables, meta = convert_msra_resnet_file(path, depth=50)
    assert meta == {"channel_order": "BGR", "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0],
                    "stride_in_1x1": True, "norm_eps": 1e-5}
    apply = _apply_fn(ResNet(depth=50, stride_in_1x1=meta["stride_in_1x1"], norm_eps=meta["norm_eps"]))
    _assert_features_close(apply(variables, jnp.asarray(bgr)), ref, ["C2", "C3", "C4", "C5"])
    # the same network with affine-fused norms (_bn_s / _bn_b only) gives the same features
    fused = convert_msra_resnet(_export_msra(tv, fused=True), depth=50)
    np.testing.assert_allclose(fused["frozen"]["bn1"]["running_var"], 1.0 - 1e-5)
    _assert_features_close(apply(fused, jnp.asarray(bgr)), ref, ["C2", "C3", "C4", "C5"])
    # and the torchvision-style model (stride in the 3x3) does not match: the switch matters
    wrong = _apply_fn(ResNet(depth=50, stride_in_1x1=False))(variables, jnp.asarray(bgr))
    assert np.abs(np.asarray(wrong["C3"]) - ref["C3"].numpy().transpose(0, 2, 3, 1)).max() > 1e-2 * np.abs(ref["C3"].numpy()).max()


def test_msra_bad_blobs_raise():
    blobs = _export_msra(_msra_reference())
    del blobs["res3_1_branch2b_w"]
    blobs["res9_0_branch2a_w"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"R-50\.pkl.*missing keys \(1\): res3_1_branch2b_w.*unexpected keys \(1\): res9_0_branch2a_w"):
        convert_msra_resnet(blobs, depth=50, source="R-50.pkl")
    blobs = _export_msra(_msra_reference())
    del blobs["res4_0_branch2a_bn_running_var"]
    with pytest.raises(ValueError, match="res4_0_branch2a_bn: only one of running mean/var"):
        convert_msra_resnet(blobs, depth=50, source="R-50.pkl")
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        convert_msra_resnet_file("/nonexistent/nope.pkl", depth=50)


# ---------------------------------------------------------------- converter API and errors


@pytest.fixture(scope="module")
def resnet18_sd():
    torch.manual_seed(0)
    return _randomise_norms(torchvision.models.resnet18(weights=None), seed=4)


def test_bn_layout_conversion_matches_torch(resnet18_sd):
    x = np.random.RandomState(0).randn(1, 64, 96, 3).astype(np.float32)
    with torch.no_grad():
        ref = IntermediateLayerGetter(resnet18_sd, RETURN)(_nchw(x))
    variables = convert_torchvision_resnet(resnet18_sd.state_dict(), depth=18, norm="bn")
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]["layer2_0"]["downsample_bn"]) == {"scale", "bias"}
    ours = _apply_fn(ResNet(depth=18, norm="bn"))(variables, jnp.asarray(x))
    _assert_features_close(ours, ref, ["C2", "C3", "C4", "C5"])


def test_strict_keys_and_shapes(resnet18_sd):
    sd = {k: v.numpy() for k, v in resnet18_sd.state_dict().items()}
    bad = dict(sd)
    del bad["layer3.1.bn2.running_var"]
    bad["layer3.1.bn2.extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"r18\.pth.*missing keys \(1\): layer3\.1\.bn2\.running_var.*"
                                         r"unexpected keys \(1\): layer3\.1\.bn2\.extra"):
        convert_torchvision_resnet(bad, depth=18, source="r18.pth")
    with pytest.raises(ValueError, match="missing keys"):  # wrong depth: layer1.2 etc. missing
        convert_torchvision_resnet(sd, depth=34, source="r18.pth")
    wide = {k: v for k, v in sd.items()}
    wide["layer1.0.conv2.weight"] = np.zeros((64, 32, 3, 3), np.float32)  # as if groups=2
    with pytest.raises(ValueError, match=r"shape mismatch.*layer1_0/conv2/kernel"):
        convert_torchvision_resnet(wide, depth=18, source="r18.pth")
    # a prefix selects the backbone inside a bigger state_dict; fc and num_batches_tracked are ignored
    nested = {"backbone.body." + k: v for k, v in sd.items()}
    nested["roi_heads.box_predictor.cls_score.weight"] = np.zeros((2, 2))
    a = convert_torchvision_resnet(nested, depth=18, prefix="backbone.body.")
    b = convert_torchvision_resnet(sd, depth=18)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    np.testing.assert_array_equal(b["params"]["conv1"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(b["frozen"]["layer2_0"]["downsample_bn"]["running_var"], sd["layer2.0.downsample.1.running_var"])


def test_load_state_dict_file(resnet18_sd, tmp_path, monkeypatch):
    path = tmp_path / "r18.pth"
    torch.save({"model": resnet18_sd.state_dict(), "epoch": 3}, path)  # training-checkpoint wrapper
    sd = load_torchvision_state_dict(path)
    assert isinstance(sd["conv1.weight"], np.ndarray) and sd["conv1.weight"].shape == (64, 3, 7, 7)
    variables, meta = convert_torchvision_resnet_file(path, depth=18, norm_eps=0.0)
    assert meta == {"channel_order": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
                    "pixel_std": [58.395, 57.12, 57.375], "stride_in_1x1": False, "norm_eps": 0.0}
    assert variables["params"]["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 512, 512)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_torchvision_state_dict(tmp_path / "missing.pth")
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match=r"notsd\.pth.*'b'"):
        load_torchvision_state_dict(tmp_path / "notsd.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match="pip install torch"):
        load_torchvision_state_dict(path)
