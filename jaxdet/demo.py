"""Run a detector on your own images: one annotated PNG per image and the detections as COCO json.

    python -m jaxdet.demo --config configs/quickstart.py --checkpoint output/quickstart \\
        photo.jpg more_photos/ --output demo_out [--score-thresh 0.5] [--config.input.min_size_test=512]

Inputs are image files and folders (every ``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``, ``.tif``/``.tiff``
directly inside a folder, sorted by name). ``--checkpoint`` is anything ``python -m jaxdet.evaluate`` takes (a
training run's folder, its ``checkpoints/``, one step, or ``checkpoints_convert`` output); the checkpoint's
classes and pixel convention override the config. Other ``--config.x=y`` flags override config fields (the
test-time resize ``input.min_size_test``/``max_size_test`` and the canvases ``input.canvases`` matter here).

Writes to ``--output``:

- ``<image stem>.png`` per input image (``<stem>_1.png``, ... when two inputs share a stem): the original image
  with each detection scoring at least ``--score-thresh`` drawn by `jaxdet.visualization.draw_instances` (box in
  its class colour, "class score%" tag; masks and keypoints too for models that predict them);
- ``detections.json``: those detections in COCO format, a dict with ``images`` (``id`` 1..N in input order,
  ``file_name`` the absolute input path, ``height``, ``width``), ``categories`` (the checkpoint's category ids and
  names) and ``annotations`` (``id``, ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in original-image
  pixels, ``score``, ``area`` = w * h, ``iscrowd`` 0; plus ``segmentation`` as compressed RLE and
  ``keypoints`` flat ``[x, y, v, ...]`` when the model has them). It loads with ``pycocotools.coco.COCO``, and
  its ``annotations`` list is also a valid COCO *results* list for ``COCO.loadRes``.

Each image is run alone (batch 1) in its canvas, so the model compiles once per canvas. A progress bar with
an ETA follows the images.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

import numpy as np

log = logging.getLogger("jaxdet.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DETECTIONS_FILE = "detections.json"

__all__ = ["Predictor", "list_images", "to_original_frame", "run_demo", "main", "IMAGE_EXTENSIONS"]


def list_images(inputs: Sequence[str]) -> list[str]:
    """Absolute paths of the images named by ``inputs`` (files, or folders whose image files are taken, sorted).

    Raises:
      FileNotFoundError: an input does not exist.
      ValueError: an input file does not have an image extension (`IMAGE_EXTENSIONS`), or no image is found.
    """
    out = []
    for p in inputs:
        p = os.path.abspath(os.path.expanduser(p))
        if os.path.isdir(p):
            out += [os.path.join(p, f) for f in sorted(os.listdir(p))
                    if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(p, f))]
        elif os.path.isfile(p):
            if not p.lower().endswith(IMAGE_EXTENSIONS):
                raise ValueError(f"{p} is not an image file (extensions {', '.join(IMAGE_EXTENSIONS)})")
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist")
    if not out:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {list(inputs)}")
    return out


def to_original_frame(outputs: dict, image_size: Sequence[int], orig_size: Sequence[int]) -> dict:
    """One image's model outputs (canvas pixels) -> its valid detections in original-image pixels.

    Boxes are divided by the per-axis resize ratios ``image_size / orig_size`` and clipped to
    ``[0, W] x [0, H]``, as `jaxdet.evaluation.coco.detections_to_coco` (with ``image_size``) does; keypoint x, y
    are divided the same way (not clipped); box-relative masks are pasted into the original frame with
    `jaxdet.visualization.paste_masks` (threshold 0.5) using the mapped boxes.

    Args:
      outputs: numpy arrays of ONE image: ``boxes`` [D, 4] xyxy canvas pixels, ``scores`` [D], ``classes`` [D]
        (contiguous ids), ``valid`` [D] bool; optionally ``masks`` [D, S, S] probabilities and ``keypoints``
        [D, K, 3] (x, y canvas pixels, score).
      image_size: (height, width) of the resized image inside the canvas.
      orig_size: (height, width) of the original image.

    Returns:
      dict with ``boxes`` float32 [n, 4] (xyxy original pixels), ``scores`` float32 [n], ``classes`` int32 [n],
      and ``masks`` bool [n, H, W] / ``keypoints`` float32 [n, K, 3] when present; n = valid detections, in the
      model's order (score-descending for jaxdet's detectors).

    Raises:
      ValueError: a non-positive size.
    """
    ih, iw = (float(v) for v in image_size)
    oh, ow = (float(v) for v in orig_size)
    if min(ih, iw, oh, ow) <= 0:
        raise ValueError(f"to_original_frame: sizes must be positive, got image_size {image_size}, "
                         f"orig_size {orig_size}")
    ry, rx = ih / oh, iw / ow
    valid = np.asarray(outputs["valid"]).astype(bool)
    boxes = np.asarray(outputs["boxes"], np.float64)[valid] / np.array([rx, ry, rx, ry])
    boxes = np.clip(boxes, 0.0, np.array([ow, oh, ow, oh]))
    out = dict(boxes=boxes.astype(np.float32),
               scores=np.asarray(outputs["scores"], np.float32)[valid],
               classes=np.asarray(outputs["classes"]).astype(np.int32)[valid])
    if "keypoints" in outputs:
        kp = np.asarray(outputs["keypoints"], np.float64)[valid].copy()
        kp[..., 0] /= rx
        kp[..., 1] /= ry
        out["keypoints"] = kp.astype(np.float32)
    if "masks" in outputs:
        from jaxdet.visualization import paste_masks

        out["masks"] = paste_masks(np.asarray(outputs["masks"], np.float32)[valid], out["boxes"],
                                   (int(oh), int(ow)))
    return out


class Predictor:
    """A checkpoint ready to run on single images (as detectron2's ``DefaultPredictor``).

    ``Predictor(config, checkpoint)(image)`` resizes the image as at test time (``input.min_size_test`` /
    ``max_size_test``, torchvision's rule), pads it into the smallest fitting canvas of ``input.canvases``, runs
    the jit-compiled model (once per canvas) and returns `to_original_frame` of the output.

    Attributes:
      config: the config after the checkpoint's convention was applied.
      model, variables: the Flax module and its variables.
      class_names, category_ids: of the checkpoint (``class_0``... and 1..C if it does not record them).
    """

    def __init__(self, config, checkpoint: str):
        """
        Raises:
          FileNotFoundError: no checkpoint at ``checkpoint``.
          ValueError: the checkpoint does not fit the config's model (keys listed).
          FileNotFoundError also when neither the checkpoint nor ``model.num_classes`` gives the number of
            classes and the config's training json (where it is read then) does not exist.
        """
        import jax

        from jaxdet import build_detector

        self.model, init = build_detector(config, checkpoint=checkpoint)
        self.config = init.config
        self.variables = jax.device_put(init())
        n = init.num_classes
        self.class_names = init.class_names or [f"class_{i}" for i in range(n)]
        self.category_ids = init.category_ids or list(range(1, n + 1))
        model = self.model
        self._apply = jax.jit(lambda v, b: model.apply(v, b, train=False))

    def preprocess(self, image: np.ndarray) -> dict:
        """uint8 [H, W, 3] RGB -> a batch of one (``image`` [1, Hc, Wc, 3] in the model's channel order,
        ``image_size`` [1, 2], ``orig_size`` [1, 2]).

        Raises:
          ValueError: not uint8 [H, W, 3], or the resized image fits none of ``input.canvases``.
        """
        from jaxdet.data import transforms as T

        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"Predictor: image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        min_size = self.config.input.min_size_test
        min_size = max(min_size) if isinstance(min_size, (tuple, list)) else min_size
        nh, nw = T.resized_size(h, w, min_size, self.config.input.max_size_test)
        canvas = self.config.input.canvases[T.choose_canvas(nh, nw, self.config.input.canvases)]
        x = T.resize_image(image, nh, nw)
        if self.config.input.format == "BGR":
            x = x[:, :, ::-1]
        x = T.pad_to_canvas(np.ascontiguousarray(x), canvas)
        return dict(image=x[None], image_size=np.array([[nh, nw]], np.int32), orig_size=np.array([[h, w]], np.int32))

    def __call__(self, image: np.ndarray) -> dict:
        """Detections of one uint8 [H, W, 3] RGB image in its own pixels (see `to_original_frame`)."""
        import jax

        batch = self.preprocess(image)
        out = self._apply(self.variables, {k: batch[k] for k in ("image", "image_size")})
        out = {k: np.asarray(v)[0] for k, v in jax.device_get(out).items()}
        return to_original_frame(out, batch["image_size"][0], batch["orig_size"][0])


def _output_names(paths: Sequence[str]) -> list[str]:
    """``stem.png`` per path, ``stem_1.png``, ``stem_2.png``, ... for repeated stems."""
    seen: dict[str, int] = {}
    names = []
    taken = set()
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        k = seen.get(stem, 0)
        name = f"{stem}.png" if k == 0 else f"{stem}_{k}.png"
        while name in taken:
            k += 1
            name = f"{stem}_{k}.png"
        seen[stem] = k + 1
        taken.add(name)
        names.append(name)
    return names


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def run_demo(config, checkpoint: str, inputs: Sequence[str], output_dir: str, score_thresh: float = 0.5) -> dict:
    """Runs ``checkpoint`` on the images of ``inputs`` and writes the PNGs and ``detections.json`` (module
    docstring). Returns the COCO dict written to ``detections.json``.

    Raises:
      FileNotFoundError: an input or the checkpoint does not exist.
      ValueError: no images, an undecodable image (named), a checkpoint that does not fit the config, or
        ``score_thresh`` outside [0, 1].
    """
    from PIL import Image
    from tqdm import tqdm

    from jaxdet.data.transforms import decode_image
    from jaxdet.visualization import draw_instances

    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
    paths = list_images(inputs)
    predictor = Predictor(config, checkpoint)
    os.makedirs(output_dir, exist_ok=True)
    coco = {"info": {"description": f"jaxdet.demo detections of checkpoint {os.path.abspath(checkpoint)}",
                     "score_thresh": score_thresh},
            "images": [],
            "categories": [{"id": int(c), "name": str(n)} for c, n in zip(predictor.category_ids,
                                                                           predictor.class_names)],
            "annotations": []}
    for image_id, (path, name) in enumerate(tqdm(list(zip(paths, _output_names(paths))), desc="demo",
                                                 unit="image", dynamic_ncols=True), start=1):
        image = decode_image(path, "RGB")
        det = predictor(image)
        keep = det["scores"] >= score_thresh
        det = {k: v[keep] for k, v in det.items()}
        drawn = draw_instances(image, det["boxes"], classes=det["classes"], scores=det["scores"],
                               class_names=predictor.class_names, masks=det.get("masks"),
                               keypoints=det.get("keypoints"))
        Image.fromarray(drawn).save(os.path.join(output_dir, name))
        h, w = image.shape[:2]
        coco["images"].append({"id": image_id, "file_name": path, "height": h, "width": w})
        for i in range(det["boxes"].shape[0]):
            x1, y1, x2, y2 = (float(v) for v in det["boxes"][i])
            ann = {"id": len(coco["annotations"]) + 1, "image_id": image_id,
                   "category_id": int(predictor.category_ids[int(det["classes"][i])]),
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(det["scores"][i]),
                   "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if "masks" in det:
                ann["segmentation"] = _rle(det["masks"][i])
            if "keypoints" in det:
                ann["keypoints"] = [float(v) for v in det["keypoints"][i].reshape(-1)]
                ann["num_keypoints"] = int(np.sum(det["keypoints"][i][:, 2] > 0))
            coco["annotations"].append(ann)
    with open(os.path.join(output_dir, DETECTIONS_FILE), "w") as f:
        json.dump(coco, f)
    log.info("%d images, %d detections with score >= %.2f written to %s", len(paths), len(coco["annotations"]),
             score_thresh, output_dir)
    return coco


def _parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    p = argparse.ArgumentParser(prog="python -m jaxdet.demo", description=__doc__.split("\n")[0],
                                epilog="--config.KEY=VALUE overrides any config field.")
    p.add_argument("--config", required=True, help="config file (get_config()), e.g. configs/quickstart.py")
    p.add_argument("--checkpoint", required=True, help="jaxdet checkpoint folder (run, checkpoints/, step, converted)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    p.add_argument("--output", required=True, help="output folder for the PNGs and detections.json")
    p.add_argument("--score-thresh", "--score_thresh", dest="score_thresh", type=float, default=0.5,
                   help="draw and write detections scoring at least this (default 0.5)")
    return p.parse_args(rest), overrides


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns 0."""
    from jaxdet.config import load_config
    from jaxdet.engine.logger import setup_logging

    args, overrides = _parse_args(sys.argv[1:] if argv is None else list(argv))
    setup_logging(None)
    config = load_config(args.config, overrides)
    run_demo(config, args.checkpoint, args.inputs, args.output, args.score_thresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
