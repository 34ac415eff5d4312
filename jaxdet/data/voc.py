"""Pascal VOC XML folders read into the same `CocoDataset` as `jaxdet.data.coco.load_coco`.

Layout (VOC2007/VOC2012 and any folder in their format, e.g. from labelImg or CVAT's "PASCAL VOC" export)::

    root/Annotations/<id>.xml          one file per image
    root/JPEGImages/<id>.jpg           the images (else the XML's <filename> in JPEGImages/)
    root/ImageSets/Main/<split>.txt    image ids of a split, one per line (optional: split=None reads
                                       every XML of Annotations/)

`load_voc` parses the XMLs, builds the COCO-style dict in memory (``images``, ``annotations`` with
``bbox = [x, y, w, h]``, ``categories``) and hands it to `load_coco`, so the cleaning policies, checks and
record layout are exactly those of COCO data, and ``dataset.coco`` is a ``pycocotools`` COCO object over it.

Conventions (detectron2 ``data/datasets/pascal_voc.py``): VOC's integer ``xmin, ymin, xmax, ymax`` are 1-based
inclusive pixel indices, so the continuous box is ``(xmin - 1, ymin - 1, xmax, ymax)`` (a box with ``xmin=1,
xmax=W`` covers the whole image, ``x1=0, x2=W``). Classes are contiguous ids in the order of ``class_names``
(default `VOC_CLASSES`, the 20 classes in their usual order); category ids are ``1..C`` in that order. Image ids
are ``1..N`` in split order (VOC ids such as ``2008_000123`` are not integers); each record also keeps its
VOC id as ``voc_id``. The ``difficult`` flag (``<difficult>1</difficult>``) is kept per instance in
``record["difficult"]`` (bool [n]) and in each COCO annotation dict; how training sees difficult objects is
``difficult=``: ``"keep"`` (ordinary objects, as detectron2), ``"crowd"`` (``is_crowd=True``: ignored in matching,
as mmdetection's ``gt_bboxes_ignore``) or ``"drop"``. VOC evaluation (`jaxdet.evaluation.voc`) ignores
difficult objects whatever this choice.

CLI: write a split as a COCO json, so that the COCO configs train on it by config alone
(``data.train_json`` = that json, ``data.train_images = "JPEGImages"``)::

    python -m jaxdet.data.voc --root VOCdevkit/VOC2007 --split trainval \
        --output VOCdevkit/VOC2007/annotations/voc_2007_trainval.json [--classes a b c] [--difficult keep]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from typing import Sequence

import numpy as np

from jaxdet.data.coco import CocoDataset, load_coco

logger = logging.getLogger(__name__)

__all__ = ["VOC_CLASSES", "load_voc", "voc_to_coco_dict", "parse_voc_xml", "main"]

#: The 20 Pascal VOC classes in the order of py-faster-rcnn, detectron2 and torchvision.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

_DIFFICULT = ("keep", "crowd", "drop")


def _text(node, tag: str, path: str, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise ValueError(f"{path}: <{node.tag}> lacks <{tag}>")
        return None
    return child.text.strip()


def parse_voc_xml(path: str) -> dict:
    """Reads one VOC annotation file.

    Returns:
      dict with ``filename`` (str or None), ``height``/``width`` (int or None when ``<size>`` is absent) and
      ``objects``: a list of ``{"name": str, "bbox": (xmin, ymin, xmax, ymax) floats as written (1-based
      inclusive), "difficult": bool}``.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: not well-formed XML, an ``<object>`` without ``<name>`` or ``<bndbox>``, or a non-numeric
        coordinate / size (the message names the file).
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise ValueError(f"VOC annotation file {path} is not well-formed XML: {e}") from e
    size = root.find("size")
    h = w = None
    try:
        if size is not None and size.find("height") is not None and size.find("width") is not None:
            h, w = int(float(_text(size, "height", path))), int(float(_text(size, "width", path)))
            if h <= 0 or w <= 0:  # some tools write 0 when they did not know the size
                h = w = None
        objects = []
        for obj in root.findall("object"):
            name = _text(obj, "name", path)
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError(f"{path}: object {name!r} lacks <bndbox>")
            box = tuple(float(_text(bb, k, path)) for k in ("xmin", "ymin", "xmax", "ymax"))
            diff = _text(obj, "difficult", path, required=False)
            objects.append({"name": name, "bbox": box, "difficult": bool(int(float(diff))) if diff else False})
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: {e}") from e
    return {"filename": _text(root, "filename", path, required=False), "height": h, "width": w,
            "objects": objects}


def _split_ids(root: str, split: str | None) -> list[str]:
    if split is None:
        ann_dir = os.path.join(root, "Annotations")
        if not os.path.isdir(ann_dir):
            raise FileNotFoundError(f"VOC folder {root} has no Annotations/ folder")
        return sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith(".xml"))
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        avail = sorted(f[:-4] for f in os.listdir(os.path.dirname(path))) if os.path.isdir(os.path.dirname(path)) \
            else []
        raise FileNotFoundError(f"VOC split file {path} not found (splits there: {avail}; split=None reads every "
                                "XML of Annotations/)")
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path} lists an image id twice")
    return ids


def voc_to_coco_dict(root: str | os.PathLike, split: str | None = "trainval",
                     class_names: Sequence[str] | None = VOC_CLASSES, difficult: str = "keep") -> dict:
    """The COCO-format dict of a VOC folder (see the module docstring for the conventions).

    Args:
      root: the VOC folder (holding ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``).
      split: name of ``ImageSets/Main/<split>.txt``, or None for every XML in ``Annotations/``.
      class_names: the classes, in contiguous-id order; None collects the names found in the XMLs (sorted).
      difficult: ``"keep"``, ``"crowd"`` or ``"drop"`` (see the module docstring).

    Returns:
      ``{"images": [{"id", "file_name" (relative to JPEGImages/), "height", "width", "voc_id"}],
      "annotations": [{"id", "image_id", "category_id", "bbox" [x, y, w, h], "area", "iscrowd", "difficult"}],
      "categories": [{"id": 1.., "name"}]}``.

    Raises:
      FileNotFoundError: the split file, an annotation file, or an image (first few listed) is missing.
      ValueError: a malformed XML; an object whose class is not in ``class_names`` (file and name given);
        unknown ``difficult`` policy; empty ``class_names``.
    """
    from tqdm import tqdm

    if difficult not in _DIFFICULT:
        raise ValueError(f"difficult must be one of {_DIFFICULT}, got {difficult!r}")
    root = os.path.abspath(os.fspath(root))
    ids = _split_ids(root, split)
    parsed = []
    for vid in tqdm(ids, desc=f"VOC {os.path.basename(root)} {split or 'all'}", unit="xml", leave=False,
                    mininterval=2.0, disable=len(ids) < 2000):
        parsed.append(parse_voc_xml(os.path.join(root, "Annotations", f"{vid}.xml")))
    if class_names is None:
        class_names = sorted({o["name"] for p in parsed for o in p["objects"]})
    class_names = [str(c) for c in class_names]
    if not class_names:
        raise ValueError(f"VOC folder {root}: no classes (class_names is empty and no object was found)")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {class_names}")
    cat_id = {n: i + 1 for i, n in enumerate(class_names)}

    img_dir = os.path.join(root, "JPEGImages")
    images, annotations, missing = [], [], []
    for image_id, (vid, p) in enumerate(zip(ids, parsed), start=1):
        file_name = f"{vid}.jpg"
        if not os.path.exists(os.path.join(img_dir, file_name)) and p["filename"] and \
                os.path.exists(os.path.join(img_dir, p["filename"])):
            file_name = p["filename"]
        full = os.path.join(img_dir, file_name)
        if not os.path.exists(full):
            missing.append(full)
            continue
        h, w = p["height"], p["width"]
        if h is None:
            from PIL import Image, ImageOps

            with Image.open(full) as im:  # header only; upright size as decode_image sees it
                w, h = ImageOps.exif_transpose(im).size
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "voc_id": vid})
        for o in p["objects"]:
            if o["name"] not in cat_id:
                raise ValueError(f"{os.path.join(root, 'Annotations', vid + '.xml')}: class {o['name']!r} is not "
                                 f"in class_names {class_names}")
            if o["difficult"] and difficult == "drop":
                continue
            xmin, ymin, xmax, ymax = o["bbox"]
            x, y = xmin - 1.0, ymin - 1.0
            bw, bh = xmax - x, ymax - y
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[o["name"]],
                                "bbox": [x, y, bw, bh], "area": max(bw, 0.0) * max(bh, 0.0),
                                "iscrowd": int(o["difficult"] and difficult == "crowd"),
                                "difficult": int(o["difficult"])})
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(ids)} images of VOC split {split!r} are missing: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return {"images": images, "annotations": annotations,
            "categories": [{"id": cat_id[n], "name": n} for n in class_names]}


def load_voc(root: str | os.PathLike, split: str | None = "trainval", *, skip_empty: bool,
             class_names: Sequence[str] | None = VOC_CLASSES, difficult: str = "keep",
             name: str | None = None) -> CocoDataset:
    """Reads a Pascal VOC folder as a `CocoDataset` (records as `load_coco`'s, plus ``difficult`` bool [n]
    and ``voc_id`` str).

    Args:
      root, split, class_names, difficult: see `voc_to_coco_dict`.
      skip_empty: drop images without a non-crowd instance (True for training, False for evaluation).
      name: a short name for logs (default ``<folder>_<split>``, e.g. ``VOC2007_test``).

    Returns:
      The `CocoDataset`; ``json_path`` is the split file (or the ``Annotations/`` folder when ``split`` is
      None), ``image_dir`` is ``JPEGImages/``.

    Raises:
      As `voc_to_coco_dict` and `load_coco`.
    """
    root = os.path.abspath(os.fspath(root))
    data = voc_to_coco_dict(root, split, class_names, difficult)
    name = name or f"{os.path.basename(root.rstrip(os.sep))}_{split or 'all'}"
    source = (os.path.join(root, "ImageSets", "Main", f"{split}.txt") if split is not None
              else os.path.join(root, "Annotations"))
    # load_coco reads a file: hand it the in-memory dict through a temporary json (removed right after).
    with tempfile.TemporaryDirectory(prefix="jaxdet_voc_") as tmp:
        path = os.path.join(tmp, f"{name}.json")
        with open(path, "w") as f:
            json.dump(data, f)
        ds = load_coco(path, os.path.join(root, "JPEGImages"), skip_empty=skip_empty, name=name)
    diff_of = {a["id"]: bool(a["difficult"]) for a in data["annotations"]}
    voc_of = {im["id"]: im["voc_id"] for im in data["images"]}
    for r in ds.records:
        r["difficult"] = np.array([diff_of[int(a)] for a in r["ann_ids"]], dtype=bool)
        r["voc_id"] = voc_of[r["image_id"]]
    return dataclasses.replace(ds, json_path=source)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxdet.data.voc``: writes `voc_to_coco_dict` of a split to a json file (see the module
    docstring); returns 0."""
    p = argparse.ArgumentParser(prog="python -m jaxdet.data.voc",
                                description="Write a Pascal VOC split as a COCO-format annotation json.")
    p.add_argument("--root", required=True, help="VOC folder with Annotations/, JPEGImages/, ImageSets/Main/")
    p.add_argument("--split", default="trainval", help="ImageSets/Main/<split>.txt; 'all' for every XML")
    p.add_argument("--output", required=True, help="the json file to write")
    p.add_argument("--classes", nargs="+", help="class names in order (default: the 20 VOC classes); "
                   "'auto' collects them from the XMLs")
    p.add_argument("--difficult", choices=_DIFFICULT, default="keep")
    args = p.parse_args(argv)
    classes = VOC_CLASSES if not args.classes else (None if args.classes == ["auto"] else args.classes)
    data = voc_to_coco_dict(args.root, None if args.split == "all" else args.split, classes, args.difficult)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(data, f)
    print(f"wrote {args.output}: {len(data['images'])} images, {len(data['annotations'])} objects, "
          f"{len(data['categories'])} classes; images are in {os.path.join(os.path.abspath(args.root), 'JPEGImages')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
