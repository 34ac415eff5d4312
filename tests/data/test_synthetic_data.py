"""The synthetic shapes dataset: deterministic bytes, idempotent, COCO-loadable, annotations agree with pixels."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from jaxdet.data.coco import load_coco
from jaxdet.data.synthetic import CLASS_NAMES, generate_synthetic_coco, main

SMALL = dict(num_train=10, num_val=4, image_size=((96, 128), (96, 128)), object_size=(12, 48), seed=5)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_synthetic_coco(tmp_path_factory.mktemp("syn") / "a", **SMALL)


def test_deterministic_bytes_and_seed_dependence(small_root, tmp_path):
    again = _files(generate_synthetic_coco(tmp_path / "b", **SMALL))
    first = _files(small_root)
    assert sorted(first) == sorted(again)
    assert len([f for f in first if f.startswith("train2017")]) == 10
    assert all(first[f] == again[f] for f in first)
    other = _files(generate_synthetic_coco(tmp_path / "c", **dict(SMALL, seed=6)))
    assert other["train2017/000000000001.jpg"] != first["train2017/000000000001.jpg"]


def test_idempotent_and_replaced_on_new_parameters(tmp_path):
    root = tmp_path / "d"
    generate_synthetic_coco(root, **dict(SMALL, num_train=6))
    img = root / "train2017" / "000000000006.jpg"
    os.utime(img, (1, 1))  # a regeneration would rewrite it
    generate_synthetic_coco(root, **dict(SMALL, num_train=6))
    assert os.stat(img).st_mtime == 1
    generate_synthetic_coco(root, **dict(SMALL, num_train=3))  # other parameters: previous files removed
    assert not img.exists() and (root / "train2017" / "000000000003.jpg").exists()
    assert json.loads((root / "synthetic_coco.json").read_text())["num_train"] == 3
    os.remove(root / "val2017" / "000010000002.jpg")  # incomplete: regenerated
    generate_synthetic_coco(root, **dict(SMALL, num_train=3))
    assert (root / "val2017" / "000010000002.jpg").exists()


def test_loadable_and_annotations_match_pixels(small_root):
    for split, n in (("train2017", 10), ("val2017", 4)):
        ds = load_coco(small_root / "annotations" / f"instances_{split}.json", small_root / split, skip_empty=True)
        assert len(ds.records) == n and ds.class_names == list(CLASS_NAMES) and ds.category_ids == [1, 2, 3]
        assert ds.stats["clipped_boxes"] == 0 and ds.stats["degenerate_boxes"] == 0
    data = json.loads((small_root / "annotations" / "instances_train2017.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    contrasts = []
    for a in data["annotations"]:
        im = images[a["image_id"]]
        h, w = im["height"], im["width"]
        assert 96 <= h <= 128 and 96 <= w <= 128 and a["iscrowd"] == 0
        poly = np.array(a["segmentation"][0]).reshape(-1, 2)
        x, y, bw, bh = a["bbox"]
        np.testing.assert_allclose([x, y, x + bw, y + bh], [*poly.min(0), *poly.max(0)], atol=0.011)
        assert 12 - 0.01 <= max(bw, bh) <= 48 + 0.01
        assert a["area"] == pytest.approx(float(mask_utils.area(mask_utils.frPyObjects(a["segmentation"], h, w))[0]),
                                          rel=0.15, abs=12)
        m = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))[:, :, 0].astype(bool)
        ys, xs = np.nonzero(m)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + bw, y + bh], atol=1.0)
        # the object is visible: its (centre) pixels differ from a band just outside its box
        pix = np.asarray(Image.open(small_root / "train2017" / im["file_name"]), np.float32)
        inner = pix[m].mean(0)
        x1, y1 = max(int(x) - 4, 0), max(int(y) - 4, 0)
        x2, y2 = min(int(x + bw) + 5, w), min(int(y + bh) + 5, h)
        band = np.zeros_like(m)
        band[y1:y2, x1:x2] = True
        band[int(y):int(y + bh) + 1, int(x):int(x + bw) + 1] = False
        if band.any():
            contrasts.append(np.linalg.norm(inner - pix[band].mean(0)))
    assert len(contrasts) >= 10
    assert np.median(contrasts) > 40
    per_image = np.bincount([a["image_id"] for a in data["annotations"]])
    assert per_image[per_image > 0].max() <= 6
    assert len({a["category_id"] for a in data["annotations"]}) == 3


def test_train_and_val_are_disjoint(small_root):
    tr = json.loads((small_root / "annotations" / "instances_train2017.json").read_text())
    va = json.loads((small_root / "annotations" / "instances_val2017.json").read_text())
    assert not {i["id"] for i in tr["images"]} & {i["id"] for i in va["images"]}
    assert not {a["id"] for a in tr["annotations"]} & {a["id"] for a in va["annotations"]}
    tr_bytes = {(small_root / "train2017" / i["file_name"]).read_bytes() for i in tr["images"]}
    assert not any((small_root / "val2017" / i["file_name"]).read_bytes() in tr_bytes for i in va["images"])


def test_cli(tmp_path, capsys):
    main(["--root", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--format", "png"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert (tmp_path / "cli" / "train2017" / "000000000002.png").exists()
    assert (tmp_path / "cli" / "val2017" / "000010000001.png").exists()


def test_bad_parameters():
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_coco("/nonexistent", image_size=(10, 10))
    with pytest.raises(ValueError, match="image_format"):
        generate_synthetic_coco("/nonexistent", image_format="gif")
