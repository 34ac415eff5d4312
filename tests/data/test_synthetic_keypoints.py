"""The synthetic keypoint dataset: deterministic, COCO-keypoint layout, keypoints on the drawn rectangles with
visibility from the drawing order, and no change to the shapes dataset."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from jaxdet.data.coco import load_coco
from jaxdet.data.synthetic import (KEYPOINT_NAMES, KEYPOINT_OKS_SIGMAS, KEYPOINT_SKELETON, generate_synthetic_coco,
                                   main)

SMALL = dict(num_train=24, num_val=6, image_size=((96, 128), (96, 128)), object_size=(16, 56), seed=3,
             keypoints=True)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, n), root)] = f.read()
    return out


@pytest.fixture(scope="module")
def kp_root(tmp_path_factory):
    return generate_synthetic_coco(tmp_path_factory.mktemp("synkp") / "a", **SMALL)


def test_deterministic_and_mode_switch(kp_root, tmp_path):
    first = _files(kp_root)
    assert "annotations/keypoints_train2017.json" in first and "annotations/instances_train2017.json" not in first
    again = _files(generate_synthetic_coco(tmp_path / "b", **SMALL))
    assert first == again
    assert json.loads(first["synthetic_coco.json"])["keypoints"] is True
    # the same root switched to the shapes dataset: the keypoint files are removed, the shapes marker has no
    # keypoint entry (a shapes dataset generated before the option existed stays valid)
    root = generate_synthetic_coco(tmp_path / "b", **dict(SMALL, keypoints=False))
    names = set(_files(root))
    assert "annotations/instances_train2017.json" in names and "annotations/keypoints_train2017.json" not in names
    assert "keypoints" not in json.loads((root / "synthetic_coco.json").read_text())
    shapes = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert len(shapes["categories"]) == 3 and "keypoints" not in shapes["annotations"][0]


def test_coco_keypoint_layout_and_loader(kp_root):
    data = json.loads((kp_root / "annotations" / "keypoints_train2017.json").read_text())
    (cat,) = data["categories"]
    assert cat["id"] == 1 and cat["name"] == "rectangle"
    assert tuple(cat["keypoints"]) == KEYPOINT_NAMES and len(KEYPOINT_NAMES) == 5
    assert [tuple(p) for p in cat["skeleton"]] == list(KEYPOINT_SKELETON)
    assert tuple(cat["kpt_oks_sigmas"]) == KEYPOINT_OKS_SIGMAS
    for split, n in (("train2017", 24), ("val2017", 6)):
        ds = load_coco(kp_root / "annotations" / f"keypoints_{split}.json", kp_root / split, skip_empty=False)
        assert len(ds.records) == n and ds.class_names == ["rectangle"] and ds.category_ids == [1]
        assert ds.keypoint_names == KEYPOINT_NAMES and tuple(ds.keypoint_oks_sigmas) == KEYPOINT_OKS_SIGMAS
        assert ds.stats["clipped_boxes"] == 0 and ds.stats["degenerate_boxes"] == 0
        for rec in ds.records:
            assert rec["keypoints"].shape == (len(rec["boxes"]), 5, 3) and rec["keypoints"].dtype == np.float32


def test_keypoints_agree_with_the_drawing(kp_root):
    data = json.loads((kp_root / "annotations" / "keypoints_train2017.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    counts = np.zeros(3, int)
    contrasts = []
    for image_id, anns in by_image.items():
        im = images[image_id]
        h, w = im["height"], im["width"]
        pix = np.asarray(Image.open(kp_root / "train2017" / im["file_name"]), np.float32)
        masks = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))[:, :, 0].astype(bool)
                 for a in anns]
        for i, a in enumerate(anns):
            kp = np.asarray(a["keypoints"], np.float64).reshape(5, 3)
            poly = np.asarray(a["segmentation"][0]).reshape(4, 2)        # a rectangle: 4 corners
            v = kp[:, 2].astype(int)
            counts += np.bincount(v, minlength=3)
            assert a["num_keypoints"] == int((v > 0).sum())
            assert not kp[v == 0].any()                                   # unlabelled: (0, 0, 0)
            lab = v[:4] > 0
            np.testing.assert_allclose(kp[:4][lab, :2], poly[lab], atol=0.011)
            if v[4]:
                np.testing.assert_allclose(kp[4, :2], poly.mean(0), atol=0.011)
            # corner names: left_* left of right_*, *_top above *_bottom, on the unrotated rectangle
            left, right = poly[[0, 3]].mean(0), poly[[1, 2]].mean(0)
            top, bottom = poly[[0, 1]].mean(0), poly[[2, 3]].mean(0)
            assert left[0] < right[0] and top[1] < bottom[1]
            # a labelled point under a rectangle drawn later (higher id) is marked hidden (v = 1)
            for (x, y), vis in zip(kp[:, :2], v):
                if vis:
                    px, py = min(int(x), w - 1), min(int(y), h - 1)
                    if any(m[py, px] for m in masks[i + 1:]):
                        assert vis == 1
            # the centre of a visible rectangle looks different from the background just outside its box
            if v[4] == 2:
                x0, y0, bw, bh = a["bbox"]
                ring = np.zeros((h, w), bool)
                ring[max(int(y0) - 3, 0):int(y0 + bh) + 4, max(int(x0) - 3, 0):int(x0 + bw) + 4] = True
                ring[int(y0):int(y0 + bh) + 1, int(x0):int(x0 + bw) + 1] = False
                if ring.any():
                    contrasts.append(np.linalg.norm(pix[int(kp[4, 1]), int(kp[4, 0])] - pix[ring].mean(0)))
    assert counts[2] > 0.7 * counts.sum() and counts[1] > 0 and counts[0] > 0
    assert np.median(contrasts) > 40


def test_flip_pairs_from_the_names():
    """The loader's flip swaps left_* and right_* (DESIGN.md: left/right keypoints swapped on flip)."""
    instances = pytest.importorskip("jaxdet.data.instances")
    perm = np.asarray(instances.keypoint_flip_indices(KEYPOINT_NAMES))
    np.testing.assert_array_equal(perm, [1, 0, 3, 2, 4])


def test_cli_keypoints(tmp_path, capsys):
    main(["--root", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--keypoints"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert (tmp_path / "cli" / "annotations" / "keypoints_val2017.json").exists()
