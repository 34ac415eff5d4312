"""Bad input not covered elsewhere: the command line fails fast naming the config key, EXIF-rotated photos
keep their boxes on their pixels, invalid polygons follow detectron2's policy.

(Images, annotation files, weights and evaluation have their own tests: tests/data/test_data_transforms.py,
tests/data/test_data_coco.py, tests/data/test_data_pipeline.py, tests/reliability/test_checkpoints.py,
tests/evaluation/test_coco_eval.py; README "Reliability" has the table.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxdet.data.coco import load_coco
from jaxdet.data.pipeline import load_example
from jaxdet.train import normalize_argv, unknown_config_overrides
from tests.engine.tiny import REPO
from tests.reliability.tiny_cli import subprocess_env

FRCNN = os.path.join(REPO, "configs", "faster_rcnn.py")


@pytest.mark.parametrize("args,named", [
    (["--config.solver.bogus=1"], "unknown config key(s) solver.bogus"),
    (["--config.nosuch.key=1", "--config.solver.base_lr=0.1"], "unknown config key(s) nosuch.key"),
    (["--config.solver.base_lr=abc"], "--config.solver.base_lr=abc: could not convert string to float"),
    (["--no-resume", "--config.solver.nan_policy=foo"], "config solver.nan_policy='foo': must be one of"),
])
def test_cli_bad_config_fails_before_any_work(tmp_path, args, named):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "jaxdet.train", "--config", FRCNN, f"--config.output_dir={out}",
            f"--config.data.root={tmp_path / 'no_data_here'}", *args]
    p = subprocess.run(argv, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    text = p.stdout + p.stderr
    assert p.returncode == 1, text
    assert named in text, text
    assert "Traceback" not in text and "Unknown command line flag" not in text, text
    assert not out.exists() and "annotation file" not in text  # nothing written, no data read


def test_argv_helpers(tmp_path):
    assert normalize_argv(["prog", "--no-resume", "--no_resume", "--resume", "--config.x=--no-resume"]) == [
        "prog", "--noresume", "--noresume", "--resume", "--config.x=--no-resume"]
    argv = ["prog", "--config", FRCNN, "--config.solver.base_lr=1", "--config.solver.bogus=2",
            "--config.model.rpn.nope=3", "--config.model.rpn.nms_thresh=0.5"]
    assert unknown_config_overrides(argv) == ["solver.bogus", "model.rpn.nope"]
    assert unknown_config_overrides(["prog", f"--config={FRCNN}", "--config.bogus=1"]) == ["bogus"]
    assert unknown_config_overrides(["prog", "--config.bogus=1"]) == []  # no config file: absl reports


def _write_json(tmp_path, images, annotations, categories=({"id": 1, "name": "thing"},)):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=list(categories))))
    return path


def test_exif_rotated_photo_boxes_stay_on_their_pixels(tmp_path):
    # The upright photo is 60x40 (HxW) with a red block at rows 10..20, cols 25..35; the camera stored it
    # rotated (40x60) with EXIF orientation 6 ("rotate 90 degrees clockwise to display"). COCO annotates the
    # upright photo, and detectron2 applies the EXIF orientation when reading: so must we.
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[10:20, 25:35] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (60, 40)  # (W, H): stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    stored.save(img_dir / "photo.jpg", quality=98, exif=exif)
    ann = dict(id=5, image_id=1, category_id=1, bbox=[25, 10, 10, 10], iscrowd=0, area=100, segmentation=[])
    path = _write_json(tmp_path, [dict(id=1, file_name="photo.jpg", height=60, width=40)], [ann])
    record = load_coco(path, img_dir, skip_empty=True).records[0]
    for flip in (False, True):
        ex = load_example(record, canvas_hw=(128, 128), min_size=80, max_size=120, flip=flip, max_instances=4)
        assert tuple(ex["image_size"]) == (120, 80)  # upright 60x40 scaled by 2
        x1, y1, x2, y2 = ex["gt_boxes"][0]
        np.testing.assert_allclose([x1, y1, x2, y2], [10, 20, 30, 40] if flip else [50, 20, 70, 40])
        red = (ex["image"][..., 0] > 150) & (ex["image"][..., 1] < 100)
        inside = red[int(y1):int(y2), int(x1):int(x2)]
        assert inside.mean() > 0.9 and red.sum() - inside.sum() < 0.05 * red.sum()
    # the json declaring the stored (unrotated) size is refused, naming the file
    bad = _write_json(tmp_path, [dict(id=1, file_name="photo.jpg", height=40, width=60)], [ann])
    record = load_coco(bad, img_dir, skip_empty=True).records[0]
    with pytest.raises(ValueError, match=r"photo\.jpg: decoded size 60x40 differs from the annotation's 40x60"):
        load_example(record, canvas_hw=(128, 128), min_size=80, max_size=120, flip=False, max_instances=4)


def test_invalid_polygons_follow_detectron2(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.new("RGB", (50, 40)).save(img_dir / "1.png")
    square = [5, 5, 15, 5, 15, 15, 5, 15]
    bowtie = [20, 20, 30, 30, 30, 20, 20, 30]  # self-intersecting
    anns = [
        dict(id=1, segmentation=[square]),                          # valid
        dict(id=2, segmentation=[bowtie]),                          # self-intersecting: kept as is
        dict(id=3, segmentation=[[1, 1, 2, 2]]),                    # 2 points only -> dropped
        dict(id=4, segmentation=[[]]),                              # one empty polygon -> dropped
        dict(id=5, segmentation=[[1, 1, 9, 1, float("nan"), 5]]),   # NaN coordinate -> dropped
        dict(id=6, segmentation=[square, [3, 3, 4]]),               # one bad polygon removed, one kept
        dict(id=7, segmentation=[]),                                # no segmentation given: box kept
    ]
    anns = [dict(a, image_id=1, category_id=1, bbox=[2, 2, 20, 20], iscrowd=0, area=1.0) for a in anns]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(images=[dict(id=1, file_name="1.png", height=40, width=50)], annotations=anns,
                                    categories=[{"id": 1, "name": "x"}])))
    ds = load_coco(path, img_dir, skip_empty=False)
    rec = ds.records[0]
    assert rec["ann_ids"].tolist() == [1, 2, 6, 7]
    assert rec["segmentations"] == [[square], [bowtie], [square], []]
    assert ds.stats["invalid_segmentations"] == 3 and ds.stats["invalid_polygons"] == 4
    assert len(ds.coco.getAnnIds()) == 7  # evaluation keeps the unmodified json
