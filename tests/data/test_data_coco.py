"""load_coco on real coco128 (counts, contiguous ids, box conversion) and on hand-made bad/edge-case json."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from jaxdet.data.coco import load_coco


@pytest.fixture(scope="module")
def coco128_json(coco128_root):
    with open(coco128_root / "annotations" / "instances_train2017.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def coco128_eval(coco128_root):
    return load_coco(coco128_root / "annotations" / "instances_train2017.json", coco128_root / "train2017",
                     skip_empty=False)


def test_coco128_counts(coco128_eval, coco128_json):
    ds = coco128_eval
    assert len(ds.records) == 128
    assert ds.num_classes == 80 and len(ds.class_names) == 80
    kept = ds.stats["num_instances"]
    dropped = ds.stats["degenerate_boxes"] + ds.stats["nonfinite_boxes"]
    assert ds.stats["num_annotations_json"] == 939
    assert kept + dropped == 939
    assert ds.stats["num_crowd"] == 10
    assert sum(int(r["is_crowd"].sum()) for r in ds.records) == 10
    # records sorted by id, every json image present, absolute existing paths
    ids = [r["image_id"] for r in ds.records]
    assert ids == sorted(im["id"] for im in coco128_json["images"])
    assert all(os.path.isabs(r["file_name"]) and os.path.exists(r["file_name"]) for r in ds.records)
    assert len(ds.coco.getImgIds()) == 128 and len(ds.coco.getAnnIds()) == 939


def test_coco128_contiguous_mapping_round_trips(coco128_eval, coco128_json):
    ds = coco128_eval
    json_cat_ids = sorted(c["id"] for c in coco128_json["categories"])
    assert ds.category_ids == json_cat_ids
    assert ds.category_ids[0] == 1 and ds.category_ids[-1] == 90  # COCO's ids have gaps
    names = {c["id"]: c["name"] for c in coco128_json["categories"]}
    assert ds.class_names == [names[c] for c in json_cat_ids]
    by_id = {a["id"]: a for a in coco128_json["annotations"]}
    n = 0
    for r in ds.records:
        assert r["classes"].dtype == np.int32 and r["boxes"].dtype == np.float32 and r["is_crowd"].dtype == bool
        assert np.all((r["classes"] >= 0) & (r["classes"] < 80))
        back = ds.class_to_category(r["classes"])
        for aid, cat, box, crowd, seg in zip(r["ann_ids"], back, r["boxes"], r["is_crowd"], r["segmentations"]):
            a = by_id[int(aid)]
            assert a["image_id"] == r["image_id"] and a["category_id"] == cat
            assert bool(a["iscrowd"]) == crowd and a["segmentation"] == seg
            x, y, w, h = a["bbox"]
            want = np.clip([x, y, x + w, y + h], 0, [r["width"], r["height"]] * 2)
            np.testing.assert_allclose(box, want, rtol=0, atol=1e-3)
            n += 1
    assert n == ds.stats["num_instances"]
    assert ds.category_to_class[90] == 79


def test_coco128_skip_empty_matches_json(coco128_root, coco128_json):
    ds = load_coco(coco128_root / "annotations" / "instances_train2017.json", coco128_root / "train2017",
                   skip_empty=True)
    with_obj = {a["image_id"] for a in coco128_json["annotations"] if not a["iscrowd"]}
    assert {r["image_id"] for r in ds.records} == with_obj
    assert ds.stats["skipped_empty_images"] == 128 - len(with_obj)
    assert all((~r["is_crowd"]).any() for r in ds.records)


def _write_dataset(tmp_path, images, annotations, categories=None, make_files=True):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for im in images:
        if make_files:
            Image.new("RGB", (im["width"], im["height"])).save(img_dir / im["file_name"])
    data = dict(images=images, annotations=annotations,
                categories=categories if categories is not None else [dict(id=3, name="a"), dict(id=7, name="b")])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, img_dir


def _img(i, h=20, w=30):
    return dict(id=i, file_name=f"{i}.png", height=h, width=w)


def _ann(i, image_id, bbox, cat=3, crowd=0):
    return dict(id=i, image_id=image_id, category_id=cat, bbox=bbox, iscrowd=crowd, area=1.0, segmentation=[])


def test_policies_clip_drop_crowd_skip(tmp_path, caplog):
    images = [_img(1), _img(2), _img(3)]
    anns = [
        _ann(10, 1, [-5, 2, 10, 8]),             # partly left of the image -> clipped to x1=0
        _ann(11, 1, [25, 15, 10, 10], cat=7),    # partly outside bottom/right -> clipped to 30, 20
        _ann(12, 1, [4, 4, 0.5, 5]),             # 0.5 px wide -> dropped
        _ann(13, 1, [29.5, 3, 5, 5]),            # 0.5 px wide after clipping -> dropped
        _ann(14, 1, [1, 1, float("nan"), 3]),    # NaN -> dropped
        _ann(15, 1, [1, 1, 3, float("inf")]),    # inf -> dropped
        _ann(16, 2, [0, 0, 30, 20], crowd=1),    # image 2 has only a crowd region
        _ann(17, 3, [40, 40, 5, 5]),             # entirely outside -> degenerate -> image 3 empty
    ]
    path, img_dir = _write_dataset(tmp_path, images, anns)
    with caplog.at_level(logging.WARNING, logger="jaxdet.data.coco"):
        ev = load_coco(path, img_dir, skip_empty=False)
    assert ev.stats["clipped_boxes"] == 4 and ev.stats["degenerate_boxes"] == 2 + 1
    assert ev.stats["nonfinite_boxes"] == 2
    r1, r2, r3 = ev.records
    np.testing.assert_array_equal(r1["boxes"], np.array([[0, 2, 5, 10], [25, 15, 30, 20]], np.float32))
    np.testing.assert_array_equal(r1["classes"], [0, 1])
    np.testing.assert_array_equal(r1["ann_ids"], [10, 11])
    np.testing.assert_array_equal(r2["is_crowd"], [True])
    assert r3["boxes"].shape == (0, 4) and r3["classes"].shape == (0,)
    assert ev.category_ids == [3, 7] and ev.class_names == ["a", "b"]
    # each policy logged once, with its count
    msgs = [m for m in caplog.messages if "ann.json" in m]
    assert any("3 annotations with a box narrower" in m for m in msgs)
    assert any("2 annotations with a NaN/inf" in m for m in msgs)
    assert any("4 boxes clipped" in m for m in msgs)

    tr = load_coco(path, img_dir, skip_empty=True)
    assert [r["image_id"] for r in tr.records] == [1]
    assert tr.stats["skipped_empty_images"] == 2


def test_dangling_image_id_names_annotation_and_file(tmp_path):
    path, img_dir = _write_dataset(tmp_path, [_img(1)], [_ann(10, 1, [0, 0, 5, 5]), _ann(4242, 99, [0, 0, 5, 5])])
    with pytest.raises(ValueError, match=r"ann\.json.*annotation 4242.*image_id 99"):
        load_coco(path, img_dir, skip_empty=False)


def test_dangling_category_id_names_annotation_and_file(tmp_path):
    path, img_dir = _write_dataset(tmp_path, [_img(1)], [_ann(77, 1, [0, 0, 5, 5], cat=5)])
    with pytest.raises(ValueError, match=r"ann\.json.*annotation 77.*category_id 5"):
        load_coco(path, img_dir, skip_empty=False)


def test_malformed_bbox(tmp_path):
    path, img_dir = _write_dataset(tmp_path, [_img(1)], [_ann(8, 1, [0, 0, 5])])
    with pytest.raises(ValueError, match=r"annotation 8 has a malformed bbox"):
        load_coco(path, img_dir, skip_empty=False)


def test_missing_images_listed(tmp_path):
    images = [_img(i) for i in range(1, 9)]
    path, img_dir = _write_dataset(tmp_path, images, [])
    for i in (2, 3, 4, 5, 6, 7):
        os.remove(img_dir / f"{i}.png")
    with pytest.raises(FileNotFoundError) as e:
        load_coco(path, img_dir, skip_empty=False)
    msg = str(e.value)
    assert "6 of 8 images" in msg and str(img_dir / "2.png") in msg and "..." in msg
    assert str(img_dir / "7.png") not in msg  # only the first few are named


def test_unreadable_json_and_missing_keys(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"bad\.json.*not readable JSON"):
        load_coco(bad, tmp_path, skip_empty=False)
    nokeys = tmp_path / "nokeys.json"
    nokeys.write_text(json.dumps(dict(images=[], categories=[])))
    with pytest.raises(ValueError, match=r"nokeys\.json lacks the key\(s\) \['annotations'\]"):
        load_coco(nokeys, tmp_path, skip_empty=False)
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_coco(tmp_path / "nothere.json", tmp_path, skip_empty=False)


def test_duplicate_image_id(tmp_path):
    path, img_dir = _write_dataset(tmp_path, [_img(1), dict(_img(1), file_name="x.png")], [])
    with pytest.raises(ValueError, match="duplicate image id 1"):
        load_coco(path, img_dir, skip_empty=False)
