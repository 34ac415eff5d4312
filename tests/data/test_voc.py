"""Pascal VOC folders read as CocoDataset (jaxdet.data.voc), on a small hand-made VOC tree."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jaxdet.data.pipeline import load_example
from jaxdet.data.voc import VOC_CLASSES, load_voc, parse_voc_xml, voc_to_coco_dict


def _xml(filename, w, h, objects, size=True):
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    sz = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>{sz}{objs}</annotation>"


def _make_voc(root, images, splits):
    """images: {voc_id: (w, h, objects, write_size)}; splits: {name: [ids]}."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / d, exist_ok=True)
    for vid, (w, h, objects, size) in images.items():
        (root / "Annotations" / f"{vid}.xml").write_text(_xml(f"{vid}.jpg", w, h, objects, size))
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{vid}.jpg")
    for name, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture()
def voc(tmp_path):
    images = {
        "000005": (50, 40, [("dog", (1, 1, 50, 40), False), ("person", (11, 6, 20, 30), True)], True),
        "000007": (60, 30, [("cat", (5, 5, 14, 24), False)], True),
        "000009": (30, 20, [("person", (3, 4, 10, 12), True)], False),  # only difficult; no <size>
        "000012": (40, 40, [], True),  # no object
    }
    return _make_voc(tmp_path / "VOC2007", images, {"trainval": ["000005", "000007", "000009"],
                                                     "test": ["000012", "000007"]})


def test_boxes_classes_and_ids_follow_detectron2_convention(voc):
    ds = load_voc(voc, "trainval", skip_empty=False)
    assert ds.class_names == list(VOC_CLASSES) and ds.category_ids == list(range(1, 21))
    assert ds.name == "VOC2007_trainval" and ds.json_path.endswith("ImageSets/Main/trainval.txt")
    assert [r["voc_id"] for r in ds.records] == ["000005", "000007", "000009"]
    assert [r["image_id"] for r in ds.records] == [1, 2, 3]
    r = ds.records[0]
    assert (r["height"], r["width"]) == (40, 50)
    assert r["file_name"] == str(voc / "JPEGImages" / "000005.jpg")
    # VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> continuous (xmin - 1, ymin - 1, xmax, ymax)
    np.testing.assert_array_equal(r["boxes"], [[0, 0, 50, 40], [10, 5, 20, 30]])
    assert r["classes"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert r["difficult"].tolist() == [False, True]
    assert r["is_crowd"].tolist() == [False, False]  # difficult="keep" (detectron2): ordinary objects
    # size read from the image when the XML has no <size>
    assert (ds.records[2]["height"], ds.records[2]["width"]) == (20, 30)
    # the pycocotools object holds the same ground truth
    ann = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1]))
    assert [a["bbox"] for a in ann] == [[0.0, 0.0, 50.0, 40.0], [10.0, 5.0, 10.0, 25.0]]
    assert ds.coco.loadCats(15)[0]["name"] == "person"


def test_difficult_policies_and_skip_empty(voc):
    crowd = load_voc(voc, "trainval", skip_empty=True, difficult="crowd")
    # 000009 has only a difficult (now crowd) object: skipped for training, as images with only crowd
    assert [r["voc_id"] for r in crowd.records] == ["000005", "000007"]
    assert crowd.records[0]["is_crowd"].tolist() == [False, True]
    drop = load_voc(voc, "trainval", skip_empty=False, difficult="drop")
    assert len(drop.records[0]["boxes"]) == 1 and drop.records[2]["boxes"].shape == (0, 4)
    keep = load_voc(voc, "trainval", skip_empty=True)
    assert len(keep) == 3
    test = load_voc(voc, "test", skip_empty=False)
    assert [r["voc_id"] for r in test.records] == ["000012", "000007"]
    assert test.records[0]["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match="difficult must be one of"):
        load_voc(voc, "trainval", skip_empty=False, difficult="ignore")


def test_custom_classes_and_split_none(voc):
    ds = load_voc(voc, None, skip_empty=False, class_names=None)
    assert ds.class_names == ["cat", "dog", "person"] and ds.category_ids == [1, 2, 3]
    assert [r["voc_id"] for r in ds.records] == ["000005", "000007", "000009", "000012"]
    assert ds.records[0]["classes"].tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"000005\.xml: class 'dog' is not in class_names"):
        load_voc(voc, "trainval", skip_empty=False, class_names=["cat", "person"])


def test_records_feed_the_training_pipeline(voc):
    ds = load_voc(voc, "trainval", skip_empty=True)
    ex = load_example(ds.records[0], canvas_hw=(64, 96), min_size=32, max_size=96, flip=True, max_instances=4)
    # 40x50 -> 32x40 (scale 0.8); flipped within the resized width 40
    assert ex["image_size"].tolist() == [32, 40]
    np.testing.assert_allclose(ex["gt_boxes"][:2], [[0, 0, 40, 32], [40 - 16, 4, 40 - 8, 24]], atol=1e-5)
    assert ex["gt_valid"].tolist() == [True, True, False, False]


def test_errors_name_the_file(voc, tmp_path):
    with pytest.raises(FileNotFoundError, match="val.txt not found"):
        load_voc(voc, "val", skip_empty=False)
    (voc / "Annotations" / "000007.xml").write_text("<annotation><object><name>cat</name>")
    with pytest.raises(ValueError, match=r"000007\.xml is not well-formed XML"):
        load_voc(voc, "trainval", skip_empty=False)
    (voc / "Annotations" / "000007.xml").write_text(
        "<annotation><object><name>cat</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
        "</bndbox></object></annotation>")
    with pytest.raises(ValueError, match=r"000007\.xml"):
        parse_voc_xml(str(voc / "Annotations" / "000007.xml"))
    (voc / "Annotations" / "000007.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(ValueError, match=r"000007\.xml: object 'cat' lacks <bndbox>"):
        load_voc(voc, "trainval", skip_empty=False)
    (voc / "Annotations" / "000007.xml").write_text(_xml("000007.jpg", 60, 30, []))
    os.remove(voc / "JPEGImages" / "000005.jpg")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images .*000005\.jpg"):
        voc_to_coco_dict(voc, "trainval")
    with pytest.raises(FileNotFoundError, match="Annotations"):
        load_voc(tmp_path / "nowhere", None, skip_empty=False)


def test_cli_writes_a_coco_json_that_load_coco_reads(voc, tmp_path):
    from jaxdet.data.coco import load_coco
    from jaxdet.data.voc import main

    out = tmp_path / "ann" / "voc_trainval.json"
    assert main(["--root", str(voc), "--split", "trainval", "--output", str(out), "--classes", "auto"]) == 0
    ds = load_coco(out, voc / "JPEGImages", skip_empty=False)
    assert ds.class_names == ["cat", "dog", "person"]
    ref = load_voc(voc, "trainval", skip_empty=False, class_names=None)
    for a, b in zip(ds.records, ref.records):
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["classes"], b["classes"])
        assert a["file_name"] == b["file_name"]
