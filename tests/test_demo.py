"""python -m jaxdet.demo on real coco128 images with a tiny checkpoint, and the research API (jaxdet.build_detector)."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from PIL import Image

import jaxdet
from jaxdet import demo
from jaxdet.config import load_config
from jaxdet.evaluation.coco import detections_to_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quickstart.py")


def _overrides(root, out):
    return [f"data.root={root}", "data.synthetic=False", "data.num_workers=0", f"output_dir={out}",
            "input.canvases=((128,128),)", "input.min_size_train=(96,)", "input.max_size_train=128",
            "input.min_size_test=96", "input.max_size_test=128", "data.max_instances=32",
            "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
            "model.roi_heads.batch_size_per_image=32", "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50",
            "model.roi_heads.topk_candidates_test=200", "model.roi_heads.detections_per_image=20",
            "model.fpn.out_channels=32", "model.roi_heads.fc_dim=64", "model.backbone.width_multiplier=0.125"]


@pytest.fixture(scope="module")
def tiny_checkpoint(coco128_root, tmp_path_factory):
    """A random tiny detector whose classifier is made confident in class 1 ('bicycle' in coco128's json), so
    that it returns boxes; saved as a jaxdet checkpoint with the dataset's classes."""
    from jaxdet.engine.bootstrap import load_datasets, model_meta
    from jaxdet.engine.checkpoint import save_variables

    tmp = tmp_path_factory.mktemp("demo")
    overrides = _overrides(coco128_root, tmp / "run")
    config = load_config(CONFIG, overrides)
    model, init = jaxdet.build_detector(config)
    train_ds, _ = load_datasets(config, train=True)
    assert init.num_classes == train_ds.num_classes and init.class_names == train_ds.class_names
    variables = init(seed=0)
    bias = np.array(variables["params"]["box_head"]["cls_score"]["bias"])
    bias[2] = 8.0  # logit c + 1 is contiguous class c
    variables["params"]["box_head"]["cls_score"]["bias"] = bias
    ckpt = str(tmp / "ckpt")
    save_variables(ckpt, variables, model_meta(config, train_ds, init.num_classes))
    return ckpt, overrides, train_ds


def _images(coco128_root, n=3):
    folder = os.path.join(coco128_root, "val2017")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]


def test_demo_writes_pngs_with_boxes_and_coco_json(coco128_root, tiny_checkpoint, tmp_path):
    from pycocotools.coco import COCO

    ckpt, overrides, train_ds = tiny_checkpoint
    images = _images(coco128_root)
    out = tmp_path / "out"
    argv = ["--config", CONFIG, "--checkpoint", ckpt, *images, "--output", str(out), "--score-thresh", "0.5"]
    assert demo.main(argv + [f"--config.{o}" for o in overrides]) == 0
    coco = COCO(str(out / demo.DETECTIONS_FILE))
    assert [c["name"] for c in coco.dataset["categories"]] == train_ds.class_names
    assert [im["file_name"] for im in coco.dataset["images"]] == images
    bicycle = train_ds.category_ids[1]
    for im in coco.dataset["images"]:
        orig = np.asarray(Image.open(im["file_name"]).convert("RGB"))
        png = np.asarray(Image.open(out / (os.path.splitext(os.path.basename(im["file_name"]))[0] + ".png")))
        assert png.shape == orig.shape == (im["height"], im["width"], 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]]))
        assert len(anns) >= 3, "the confident classifier must give detections"
        for a in anns:
            assert a["category_id"] == bicycle and a["score"] >= 0.5
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
            assert a["area"] == pytest.approx(w * h)
            # the box outline is drawn where the box is: its left and right edges at mid-height
            xi, xr, ym = int(np.floor(x + 0.5)), int(np.floor(x + w + 0.5)) - 1, int(y + h / 2)
            assert (png[ym, xi] != orig[ym, xi]).any() and (png[ym, xr] != orig[ym, xr]).any()
        assert (png != orig).any(-1).mean() < 0.9  # drawing, not a repainted picture

    # nothing reaches the threshold: the pictures are the originals, the json has no annotations
    out2 = tmp_path / "out2"
    coco2 = demo.run_demo(load_config(CONFIG, overrides), ckpt, images[:1], str(out2), score_thresh=1.0)
    assert coco2["annotations"] == [] and len(coco2["images"]) == 1
    png = np.asarray(Image.open(out2 / (os.path.splitext(os.path.basename(images[0]))[0] + ".png")))
    np.testing.assert_array_equal(png, np.asarray(Image.open(images[0]).convert("RGB")))


def test_demo_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo.list_images([str(tmp_path / "nope.jpg")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        demo.list_images([str(tmp_path)])
    with pytest.raises(ValueError, match="not an image file"):
        demo.list_images([str(tmp_path / "notes.txt")])
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.jpg")
    os.makedirs(tmp_path / "sub")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "sub" / "a.png")
    paths = demo.list_images([str(tmp_path), str(tmp_path / "sub" / "a.png")])
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["a.jpg", "b.png", "sub/a.png"]
    assert demo._output_names(paths) == ["a.png", "b.png", "a_1.png"]


def test_to_original_frame_agrees_with_detections_to_coco():
    rng = np.random.default_rng(0)
    d = 12
    xy = rng.uniform(0, 90, (d, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 60, (d, 2))], 1).astype(np.float32)  # some beyond the image
    out = dict(boxes=boxes, scores=rng.random(d).astype(np.float32), classes=rng.integers(0, 3, d),
               valid=rng.random(d) < 0.7)
    image_size, orig_size = np.array([96, 128]), np.array([300, 401])
    ours = demo.to_original_frame(out, image_size, orig_size)
    ref = detections_to_coco(np.array([5]), boxes[None], out["scores"][None], out["classes"][None],
                             out["valid"][None], np.array([96 / 300]), orig_size[None], [10, 20, 30],
                             image_size=image_size[None])
    assert len(ref) == ours["boxes"].shape[0] == out["valid"].sum()
    for r, b, c, s in zip(ref, ours["boxes"], ours["classes"], ours["scores"]):
        np.testing.assert_allclose([b[0], b[1], b[2] - b[0], b[3] - b[1]], r["bbox"], rtol=1e-5, atol=1e-3)
        assert [10, 20, 30][c] == r["category_id"] and s == pytest.approx(r["score"])
    # masks and keypoints follow the boxes into the original frame
    out["masks"] = np.ones((d, 7, 7), np.float32)
    out["keypoints"] = np.tile(np.array([[[48.0, 32.0, 1.0]]], np.float32), (d, 2, 1))
    full = demo.to_original_frame(out, image_size, orig_size)
    assert full["masks"].shape == (out["valid"].sum(), 300, 401)
    np.testing.assert_allclose(full["keypoints"][0, 0], [48 * 401 / 128, 32 * 300 / 96, 1.0], rtol=1e-5)
    b = np.floor(full["boxes"][0] + 0.5).astype(int)
    ys, xs = np.nonzero(full["masks"][0])  # a mask of ones covers its box (torchvision's paste: within a pixel)
    got = np.array([ys.min(), ys.max() + 1, xs.min(), xs.max() + 1])
    assert np.abs(got - np.array([b[1], b[3], b[0], b[2]])).max() <= 1, (got, b)
    ym, xm = (b[1] + b[3]) // 2, (b[0] + b[2]) // 2
    assert full["masks"][0][ym, b[0]:b[2]].all() and full["masks"][0][b[1]:b[3], xm].all()


def test_build_detector_research_api(coco128_root, tiny_checkpoint):
    ckpt, overrides, train_ds = tiny_checkpoint
    config = load_config(CONFIG, overrides)
    model, init = jaxdet.build_detector(config, checkpoint=ckpt)
    assert config.model.num_classes == -1, "the caller's config is not modified"
    assert init.config.model.num_classes == train_ds.num_classes and init.category_ids == train_ds.category_ids
    v = init()
    assert float(v["params"]["box_head"]["cls_score"]["bias"][2]) == 8.0  # the checkpoint's weights
    fresh = jaxdet.build_detector(config, num_classes=train_ds.num_classes)[1](seed=0)
    assert float(fresh["params"]["box_head"]["cls_score"]["bias"][2]) == 0.0
    with pytest.raises(ValueError, match="num_classes=3 but checkpoint"):
        jaxdet.build_detector(config, 3, checkpoint=ckpt)
    missing = load_config(CONFIG, [o for o in overrides if not o.startswith("data.root")] + ["data.root=/nowhere"])
    with pytest.raises(FileNotFoundError, match="set model.num_classes"):
        jaxdet.build_detector(missing)

    # apply on a batch of the contract: detections at inference, loss terms in training
    images = np.zeros((1, 128, 128, 3), np.uint8)
    images[0, 20:80, 30:90] = 255
    batch = dict(image=images, image_size=np.array([[96, 128]], np.int32))
    det = jax.jit(lambda v, b: model.apply(v, b, train=False))(v, batch)
    assert det["boxes"].shape == (1, 20, 4) and bool(det["valid"].any())
    gt = dict(gt_boxes=np.array([[[30, 20, 90, 80]] + [[0, 0, 0, 0]] * 31], np.float32),
              gt_classes=np.zeros((1, 32), np.int32), gt_valid=np.arange(32)[None] < 1,
              gt_is_crowd=np.zeros((1, 32), bool))
    # (traced only, not compiled, to keep the test short: tests/engine/test_steps.py trains this model)
    losses, updates = jax.eval_shape(lambda v, b, k: model.apply(v, b, train=True, rngs={"sampling": k},
                                                                 mutable=["batch_stats"]), v, {**batch, **gt},
                                     jax.random.key(0))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg"}
    assert all(x.shape == () and x.dtype == np.float32 for x in losses.values())
    assert set(updates) == {"batch_stats"}  # the quickstart backbone has trainable BatchNorm
