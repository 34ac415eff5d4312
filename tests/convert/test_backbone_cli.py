"""The backbone converter CLIs write checkpoints that `jaxdet.train` loads with their pixel convention.

A seeded torchvision ``resnet50(weights=None)`` (random BN statistics) saved as ``.pth``, and the same
arrays renamed by hand to MSRA/Detectron blob names in a ``.pkl``, go through
``python -m checkpoints_convert.torchvision_backbone`` / ``python -m checkpoints_convert.msra`` (run
in-process via ``main``); the output is read back the way the train loop reads ``model.weights``
(``jaxdet.engine.bootstrap.load_initial_weights`` then ``merge_variables`` into a Faster R-CNN).
"""
import os
import pickle

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402

from checkpoints_convert import msra as msra_cli  # noqa: E402
from checkpoints_convert import torchvision_backbone as tv_cli  # noqa: E402
from jaxdet.config import load_config  # noqa: E402
from jaxdet.engine.bootstrap import load_initial_weights, model_shapes  # noqa: E402
from jaxdet.engine.checkpoint import load_variables, merge_variables  # noqa: E402
from jaxdet.modeling.build import build_detector  # noqa: E402

torch.set_num_threads(2)

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "faster_rcnn.py")
TV_OVERRIDES = {
    "input.format": "RGB",
    "model.pixel_mean": [123.675, 116.28, 103.53],
    "model.pixel_std": [58.395, 57.12, 57.375],
    "model.backbone.stride_in_1x1": False,
    "model.backbone.norm_eps": 1e-5,
    "model.backbone.depth": 50,
    "model.backbone.groups": 1,
    "model.backbone.width_per_group": 64,
    "model.backbone.norm": "frozen_bn",
    "model.backbone.width_multiplier": 1.0,
}


@pytest.fixture(scope="module")
def tv_r50(tmp_path_factory):
    """(path of a seeded resnet50 .pth, its state_dict as numpy)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.weight.shape[0]
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g))
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    path = tmp_path_factory.mktemp("tv") / "resnet50-seeded.pth"
    torch.save(model.state_dict(), path)
    return path, {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tv_converted(tv_r50, tmp_path_factory):
    """The CLI's output folder for the seeded resnet50, and what it printed."""
    out = tmp_path_factory.mktemp("out") / "R-50-tv"
    assert tv_cli.main(["--weights", str(tv_r50[0]), "--arch", "resnet50", "--output", str(out)]) == 0
    return out


def _tv(sd, key):
    """A torch conv weight [O, I, kh, kw] as a Flax kernel [kh, kw, I, O]."""
    return sd[key].transpose(2, 3, 1, 0)


def test_torchvision_cli_writes_nested_backbone(tv_r50, tv_converted, capsys, tmp_path):
    path, sd = tv_r50
    variables, meta = load_variables(str(tv_converted))
    assert set(variables) == {"params", "frozen"}
    assert set(variables["params"]) == {"backbone"} and set(variables["frozen"]) == {"backbone"}
    params, frozen = variables["params"]["backbone"], variables["frozen"]["backbone"]
    np.testing.assert_array_equal(params["conv1"]["kernel"], _tv(sd, "conv1.weight"))
    np.testing.assert_array_equal(params["layer3_5"]["conv2"]["kernel"], _tv(sd, "layer3.5.conv2.weight"))
    np.testing.assert_array_equal(params["layer4_0"]["downsample_conv"]["kernel"],
                                  _tv(sd, "layer4.0.downsample.0.weight"))
    np.testing.assert_array_equal(frozen["layer2_0"]["downsample_bn"]["running_var"],
                                  sd["layer2.0.downsample.1.running_var"])
    np.testing.assert_array_equal(frozen["bn1"]["bias"], sd["bn1.bias"])
    assert "fc" not in params
    # every array of the torch file except fc and num_batches_tracked is there
    n_tensors = len([k for k in sd if not k.startswith("fc.") and not k.endswith("num_batches_tracked")])
    assert len(jax.tree.leaves(variables)) == n_tensors
    assert meta == {"source": str(path), "format": "torchvision", "arch": "resnet50", "content": "backbone",
                    "config_overrides": TV_OVERRIDES}
    # the same file through the CLI a second time: the output folder is never overwritten
    with pytest.raises(FileExistsError, match="R-50-tv"):
        tv_cli.main(["--weights", str(path), "--arch", "resnet50", "--output", str(tv_converted)])
    tv_cli.main(["--weights", str(path), "--arch", "resnet50", "--output", str(tmp_path / "again")])
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'again' / '0'}" in printed and "--config.model.weights=" in printed


def test_train_loop_loading_applies_convention_and_fills_backbone(tv_converted):
    # start from a config with every convention set the wrong way: loading the weights must fix them
    config = load_config(CONFIG, ["input.format=BGR", "model.pixel_std=(1.0,1.0,1.0)", "model.backbone.depth=101",
                                  "model.backbone.stride_in_1x1=True", "model.backbone.norm_eps=0.0",
                                  "model.backbone.norm=bn"])
    loaded = load_initial_weights(config, str(tv_converted))
    assert config.input.format == "RGB"
    assert tuple(config.model.pixel_mean) == (123.675, 116.28, 103.53)
    assert tuple(config.model.pixel_std) == (58.395, 57.12, 57.375)
    assert config.model.backbone.depth == 50 and config.model.backbone.stride_in_1x1 is False
    assert config.model.backbone.norm_eps == 1e-5 and config.model.backbone.norm == "frozen_bn"

    shapes = model_shapes(build_detector(config.model, 80))
    target = jax.tree.map(lambda s: np.full(s.shape, 7.0, s.dtype), shapes)
    merged = merge_variables(target, loaded, str(tv_converted), allow_missing=True)
    flat_m = dict(jax.tree_util.tree_flatten_with_path(merged)[0])
    flat_l = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    backbone = {k for k in flat_m if k[1].key == "backbone"}
    assert backbone == set(flat_l)  # the converted file covers the detector's whole backbone
    for k in backbone:
        np.testing.assert_array_equal(flat_m[k], flat_l[k])
    heads = set(flat_m) - backbone
    assert {k[1].key for k in heads} == {"neck", "rpn_head", "box_head"}
    assert all(np.all(flat_m[k] == 7.0) for k in heads)  # heads keep their initial values


# ---------------------------------------------------------------- MSRA / Caffe2 pickles

_BRANCH = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "downsample.0": "branch1",
           "bn1": "branch2a_bn", "bn2": "branch2b_bn", "bn3": "branch2c_bn", "downsample.1": "branch1_bn"}


def _msra_blobs(sd):
    """The torch arrays under Detectron's names, norms affine-fused (``_s``/``_b``), plus SGD momenta
    and the classifier, as in the real R-50.pkl. Written by hand (not with the converter's table)."""
    blobs = {"fc1000_w": sd["fc.weight"], "fc1000_b": sd["fc.bias"]}
    for k, v in sd.items():
        if k.startswith("fc.") or k.endswith(("num_batches_tracked", "running_mean", "running_var")):
            continue
        module, leaf = k.rsplit(".", 1)
        if module in ("conv1", "bn1"):
            base = "conv1" if module == "conv1" else "res_conv1_bn"
        else:
            layer, i, rest = module.split(".", 2)
            base = f"res{int(layer[5:]) + 1}_{i}_{_BRANCH[rest]}"
        if base.endswith("_bn"):
            blobs[base + ("_s" if leaf == "weight" else "_b")] = v
        else:
            blobs[base + "_w"] = v
            blobs[base + "_w_momentum"] = np.zeros_like(v)
    return blobs


@pytest.fixture(scope="module")
def msra_r50(tv_r50, tmp_path_factory):
    path = tmp_path_factory.mktemp("msra") / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": _msra_blobs(tv_r50[1])}, f, protocol=2)
    return path


def test_msra_cli_sets_bgr_and_stride_in_1x1(tv_r50, msra_r50, tmp_path):
    sd = tv_r50[1]
    out = tmp_path / "R-50-msra"
    assert msra_cli.main(["--weights", str(msra_r50), "--arch", "R-50", "--output", str(out)]) == 0  # style from arch
    variables, meta = load_variables(str(out))
    assert meta["format"] == "msra" and meta["arch"] == "R-50"
    assert meta["config_overrides"] == {**TV_OVERRIDES, "input.format": "BGR",
                                        "model.pixel_mean": [103.53, 116.28, 123.675],
                                        "model.pixel_std": [1.0, 1.0, 1.0], "model.backbone.stride_in_1x1": True}
    params, frozen = variables["params"]["backbone"], variables["frozen"]["backbone"]
    np.testing.assert_array_equal(params["layer2_0"]["conv1"]["kernel"], _tv(sd, "layer2.0.conv1.weight"))
    np.testing.assert_array_equal(frozen["layer1_0"]["downsample_bn"]["weight"], sd["layer1.0.downsample.1.weight"])
    np.testing.assert_allclose(frozen["bn1"]["running_var"], 1.0 - 1e-5)  # fused norm: scale is exactly _s
    np.testing.assert_array_equal(frozen["bn1"]["running_mean"], 0.0)

    config = load_config(CONFIG)
    loaded = load_initial_weights(config, str(out))
    assert config.input.format == "BGR" and config.model.backbone.stride_in_1x1 is True
    assert tuple(config.model.pixel_std) == (1.0, 1.0, 1.0)
    merge_variables(model_shapes(build_detector(config.model, 80)), loaded, str(out), allow_missing=True)

    # the same blobs declared Caffe2-style: stride on the 3x3, std of the FAIR ResNeXt
    assert msra_cli.main(["--weights", str(msra_r50), "--arch", "R-50", "--style", "caffe2",
                          "--output", str(tmp_path / "c2")]) == 0
    _, meta = load_variables(str(tmp_path / "c2"))
    assert meta["format"] == "caffe2"
    assert meta["config_overrides"]["model.pixel_std"] == [57.375, 57.12, 58.395]
    assert meta["config_overrides"]["input.format"] == "BGR"
    assert meta["config_overrides"]["model.backbone.stride_in_1x1"] is False


# ---------------------------------------------------------------- wrong files


def test_wrong_files_raise_naming_the_file(tv_r50, msra_r50, tmp_path):
    path, sd = tv_r50
    out = str(tmp_path / "out")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth: cannot load as a torch state_dict"):
        tv_cli.main(["--weights", str(truncated), "--arch", "resnet50", "--output", out])
    # wrong depth: 17 missing blocks x 15 tensors
    with pytest.raises(ValueError, match=r"resnet50-seeded\.pth.*missing keys \(255\): layer3\.10\."):
        tv_cli.main(["--weights", str(path), "--arch", "resnet101", "--output", out])
    with pytest.raises(ValueError, match=r"resnet50-seeded\.pth.*groups=32.*shape mismatch.*"
                                         r"layer1_0/bn1/bias: checkpoint \(64,\) vs model \(128,\)"):
        tv_cli.main(["--weights", str(path), "--arch", "resnext50_32x4d", "--output", out])
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        tv_cli.main(["--weights", str(tmp_path / "nope.pth"), "--arch", "resnet50", "--output", out])
    detector = tmp_path / "detector.pth"
    torch.save({"backbone.body." + k: torch.from_numpy(v) for k, v in sd.items()}, detector)
    with pytest.raises(ValueError, match=r"detector\.pth: this is a torchvision detection checkpoint.*--prefix"):
        tv_cli.main(["--weights", str(detector), "--arch", "resnet50", "--output", out])

    d2 = tmp_path / "d2.pkl"
    with open(d2, "wb") as f:
        pickle.dump({"model": {"backbone.bottom_up.stem.conv1.weight": np.zeros((64, 3, 7, 7))},
                     "__author__": "torchvision"}, f)
    with pytest.raises(ValueError, match=r"d2\.pkl: a detectron2 model checkpoint"):
        msra_cli.main(["--weights", str(d2), "--arch", "R-50", "--output", out])
    junk = tmp_path / "junk.pkl"
    with open(junk, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match=r"junk\.pkl: expected a dict of blobs, got list"):
        msra_cli.main(["--weights", str(junk), "--arch", "R-50", "--output", out])
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle")
    with pytest.raises(ValueError, match=r"notes\.pkl: cannot unpickle"):
        msra_cli.main(["--weights", str(text), "--arch", "R-50", "--output", out])
    # wrong depth: 17 missing blocks x 9 blobs
    with pytest.raises(ValueError, match=r"R-50\.pkl.*missing keys \(153\): res4_10_branch2a_bn_b, res4_10_branch2a_bn_s"):
        msra_cli.main(["--weights", str(msra_r50), "--arch", "R-101", "--output", out])
    assert not os.path.exists(out)  # nothing is written when conversion fails
