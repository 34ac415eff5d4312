"""Drawing (jaxdet.visualization), the dataset browser (scripts/visualize_data.py) and the log plotter
(scripts/plot_logs.py)."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxdet.evaluation.masks import paste_masks_detectron2
from jaxdet.visualization import class_color, draw_instances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_jaxdet_script_{name}", os.path.join(REPO, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GREY = 100


def _grey(h=80, w=100):
    return np.full((h, w, 3), GREY, np.uint8)


# ------------------------------------------------------------------------------------------------ draw_instances
def test_box_outline_is_drawn_inside_the_box_in_the_class_colour():
    img = _grey()
    out = draw_instances(img, [[10, 30, 40, 60]], classes=[3], labels=[""], line_width=2)
    col = np.array(class_color(3))
    assert (img == GREY).all(), "the input must not be modified"
    # the outline covers pixel columns 10, 11 and 38, 39 (x2 - 1 = 39), rows 30, 31 and 58, 59
    for y in (30, 45, 59):
        np.testing.assert_array_equal(out[y, 10], col)
        np.testing.assert_array_equal(out[y, 11], col)
        np.testing.assert_array_equal(out[y, 39], col)
        np.testing.assert_array_equal(out[y, 38], col)
    np.testing.assert_array_equal(out[30, 25], col)
    np.testing.assert_array_equal(out[59, 25], col)
    changed = (out != GREY).any(-1)
    expected = np.zeros_like(changed)
    expected[30:60, 10:40] = True
    expected[32:58, 12:38] = False
    np.testing.assert_array_equal(changed, expected)


def test_label_tag_above_the_box_or_inside_at_the_top():
    img = _grey()
    out = draw_instances(img, [[20, 40, 60, 70]], classes=[0], scores=[0.87], class_names=["circle"], font_size=10)
    col = np.array(class_color(0))
    tag = (out[:40] == col).all(-1)  # the filled tag lies above the box top (y < 40), from x = 20
    assert tag.sum() > 100 and tag[:, :20].sum() == 0
    text = (out[:40] != col).any(-1) & (out[:40] != GREY).any(-1)  # glyphs drawn on the tag
    assert text.sum() > 10
    # a box at the top edge gets its tag inside
    out2 = draw_instances(img, [[20, 0, 60, 30]], classes=[0], scores=[0.5], class_names=["circle"], font_size=10)
    assert (out2[2:12, 22:40] == col).all(-1).mean() > 0.3
    # no text at all: only the outline changes pixels
    out3 = draw_instances(img, [[20, 40, 60, 70]], classes=[0], labels=[""], line_width=1)
    assert (out3[:40] == GREY).all()


def test_masks_are_alpha_blended_and_keypoints_drawn():
    img = _grey()
    mask = np.zeros((1, 80, 100), bool)
    mask[0, 50:60, 50:70] = True
    kp = np.array([[[5.0, 5.0, 1.0], [90.0, 70.0, 0.0]]])  # second keypoint invisible
    out = draw_instances(img, [[45, 45, 75, 65]], classes=[2], labels=[""], masks=mask, keypoints=kp,
                         mask_alpha=0.5, line_width=1)
    col = np.array(class_color(2), np.float64)
    np.testing.assert_array_equal(out[55, 60], np.round(0.5 * GREY + 0.5 * col).astype(np.uint8))
    assert (out[70:80, 80:100] == GREY).all()  # the invisible keypoint is not drawn
    np.testing.assert_array_equal(out[5, 5], col.astype(np.uint8))
    assert (out[20:40, 0:40] == GREY).all()


def test_empty_and_bad_inputs():
    img = _grey()
    np.testing.assert_array_equal(draw_instances(img, np.zeros((0, 4))), img)
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(img.astype(np.float32), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="boxes must have shape"):
        draw_instances(img, [[0, 0, 1]])
    with pytest.raises(ValueError, match="finite"):
        draw_instances(img, [[0, 0, np.nan, 1]])
    with pytest.raises(ValueError, match="masks must have shape"):
        draw_instances(img, [[0, 0, 1, 1]], masks=np.zeros((1, 10, 10), bool))
    with pytest.raises(ValueError, match="class id 5 has no name"):
        draw_instances(img, [[0, 0, 1, 1]], classes=[5], class_names=["a", "b"])


# ------------------------------------------------------------------------------------------------ paste_masks
def test_paste_masks_hand_case_and_torch_grid_sample_parity():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    ones = np.ones((1, 4, 4), np.float32)
    out = paste_masks_detectron2(ones, [[2, 3, 6, 7]], (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[3:7, 2:6] = True
    np.testing.assert_array_equal(out[0], expected)

    rng = np.random.default_rng(0)
    masks = rng.random((5, 28, 28)).astype(np.float32)
    boxes = np.array([[3.3, 4.1, 50.7, 40.2], [0, 0, 80, 60], [70.5, 50.5, 79.9, 59.9], [-5, -3, 20, 10],
                      [10, 10, 12.5, 11]])
    H, W = 60, 80
    for thr in (0.5, 0.3):
        ours = paste_masks_detectron2(masks, boxes, (H, W), thr)
        for i, (x0, y0, x1, y1) in enumerate(boxes):  # detectron2 _do_paste_mask over the whole image
            gx = (torch.arange(W, dtype=torch.float64) + 0.5 - x0) / (x1 - x0) * 2 - 1
            gy = (torch.arange(H, dtype=torch.float64) + 0.5 - y0) / (y1 - y0) * 2 - 1
            grid = torch.stack([gx[None, :].expand(H, W), gy[:, None].expand(H, W)], -1)[None]
            ref = F.grid_sample(torch.tensor(masks[i], dtype=torch.float64)[None, None], grid, align_corners=False)
            np.testing.assert_array_equal(ours[i], (ref[0, 0] >= thr).numpy())


# ------------------------------------------------------------------------------------------------ plot_logs
def _write_log(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_plot_logs_keys_series_and_png(tmp_path):
    pl = _script("plot_logs")
    a = [{"iteration": 20, "train/loss_total": 2.0, "train/lr": 0.01},
         {"iteration": 40, "train/loss_total": 1.0, "train/lr": 0.02},
         {"iteration": 40, "bbox/AP": 10.0, "bbox/AP50": 20.0, "segm/AP": 5.0},
         {"iteration": 40, "train/loss_total": 0.5, "train/lr": 0.02},  # resumed run: iteration 40 again
         {"iteration": 60, "train/loss_total": None, "train/lr": 0.02}]  # NaN logged as null
    b = [{"iteration": 20, "train/loss_total": 3.0}, {"iteration": 80, "bbox/AP": 30.0}]
    _write_log(str(tmp_path / "run_a" / "metrics.jsonl"), a)
    _write_log(str(tmp_path / "b.jsonl"), b)
    recs = pl.read_metrics(str(tmp_path / "run_a"))
    its, vals = pl.series(recs, "train/loss_total")
    assert its.tolist() == [20, 40] and vals.tolist() == [2.0, 0.5]
    keys = sorted({k for r in recs for k in r})
    assert pl.resolve_keys("loss_total", keys) == ["train/loss_total"]
    assert pl.resolve_keys("bbox_AP", keys) == ["bbox/AP"]
    assert pl.resolve_keys("AP", keys) == ["bbox/AP", "segm/AP"]
    assert pl.resolve_keys("total", keys) == []
    assert pl.resolve_keys("train/lr", keys) == ["train/lr"]

    out = tmp_path / "plot.png"
    fig = pl.plot_logs([str(tmp_path / "run_a"), str(tmp_path / "b.jsonl")], ["loss_total", "bbox_AP"], str(out))
    loss_ax, ap_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["run_a", "b.jsonl"]
    np.testing.assert_array_equal(loss_ax.lines[0].get_xdata(), [20, 40])
    np.testing.assert_array_equal(loss_ax.lines[1].get_ydata(), [3.0])
    np.testing.assert_array_equal(ap_ax.lines[1].get_xdata(), [80])
    png = np.asarray(Image.open(out).convert("RGB"))
    assert png.shape[0] > 300 and (png != 255).any(-1).mean() > 0.02

    assert pl.main([str(tmp_path / "run_a"), "--keys", "nope", "--output", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match=r"key 'nope' is in none of the logs .* train/loss_total"):
        pl.plot_logs([str(tmp_path / "run_a")], ["nope"], str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        pl.read_metrics(str(tmp_path / "missing_run"))
    _write_log(str(tmp_path / "bad.jsonl"), [{"no_iteration": 1}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1"):
        pl.read_metrics(str(tmp_path / "bad.jsonl"))


# ------------------------------------------------------------------------------------------------ visualize_data
def test_visualize_data_draws_the_transformed_ground_truth(tmp_path):
    import itertools

    from jaxdet.config import load_config
    from jaxdet.data.pipeline import make_train_iterator
    from jaxdet.engine.bootstrap import load_datasets

    vd = _script("visualize_data")
    config = load_config(os.path.join(REPO, "configs", "quickstart.py"), [
        f"data.root={tmp_path / 'data'}", "data.synthetic_args.num_train=12", "data.synthetic_args.num_val=2",
        "solver.ims_per_batch=4", "input.random_flip=0.5", "seed=3"])
    paths = vd.visualize(config, str(tmp_path / "out"), num_batches=2)
    assert len(paths) == 8
    assert any(p.endswith("_flip.png") for p in paths) and not all(p.endswith("_flip.png") for p in paths)
    train_ds, _ = load_datasets(config, train=True)
    batches = list(itertools.islice(make_train_iterator(
        train_ds, batch_size=4, canvases=config.input.canvases, min_size_train=config.input.min_size_train,
        max_size_train=config.input.max_size_train, max_instances=config.data.max_instances, seed=3,
        flip_prob=0.5), 2))
    n_checked = 0
    for step, batch in batches:
        for i in range(4):
            iid = int(batch["image_id"][i])
            (path,) = [p for p in paths if os.path.basename(p).startswith(f"step{step:06d}_{i}_img{iid}")]
            png = np.asarray(Image.open(path).convert("RGB"))
            raw = batch["image"][i]
            assert png.shape == raw.shape  # the whole canvas
            assert (png == raw).all(-1).mean() > 0.5  # most pixels are the loader's, as they are
            h, w = batch["image_size"][i]
            assert (png[h - 1, : w] == 255).all()  # the resized extent, outlined in white
            if h < png.shape[0]:
                assert (png[h + 1:] == 0).all()  # padding below is left black
            for box, c, v in zip(batch["gt_boxes"][i], batch["gt_classes"][i], batch["gt_valid"][i]):
                if not v:
                    continue
                x1, y1, x2, y2 = (int(np.floor(t + 0.5)) for t in box)
                ymid = (y1 + y2) // 2
                # the box's left and right edges (at the transformed, possibly flipped coordinates) are drawn
                assert (png[ymid, x1] != raw[ymid, x1]).any() and (png[ymid, x2 - 1] != raw[ymid, x2 - 1]).any()
                n_checked += 1
    assert n_checked >= 8



def test_draw_batch_shows_bgr_canvases_in_rgb_and_marks_crowd():
    vd = _script("visualize_data")
    rgb = np.zeros((1, 40, 50, 3), np.uint8)
    rgb[..., 0] = 200  # red
    batch = dict(image=rgb[..., ::-1].copy(), image_size=np.array([[30, 50]], np.int32),
                 gt_boxes=np.array([[[5, 5, 20, 20], [0, 0, 0, 0]]], np.float32), gt_classes=np.array([[1, 0]]),
                 gt_valid=np.array([[True, False]]), gt_is_crowd=np.array([[True, False]]))
    (out,) = vd.draw_batch(batch, ["a", "b"], channel_order="BGR")
    np.testing.assert_array_equal(out[25, 40], [200, 0, 0])  # RGB again
    np.testing.assert_array_equal(out[29, 10], [255, 255, 255])  # bottom of the resized extent (h = 30)
    np.testing.assert_array_equal(out[12, 5], class_color(1))  # the crowd box's left edge
    (plain,) = vd.draw_batch({**batch, "gt_is_crowd": np.zeros((1, 2), bool)}, ["a", "b"], channel_order="BGR")
    assert (plain != out).any()  # the "(crowd)" tag is longer than "b"
    with pytest.raises(ValueError, match="outside the 1 classes"):
        vd.draw_batch(batch, ["a"], channel_order="BGR")
