"""The accuracy effect of ``model.dtype="bfloat16"`` on Faster R-CNN, measured two ways.

    python scripts/bf16_accuracy.py [--extra-images 0] [--trained-run output/quickstart] [--output bf16.json]

1. The parity model, R50-FPN at 800/1333: the reference of ``tests/convert/test_faster_rcnn_parity.py``
   (torchvision's ``fasterrcnn_resnet50_fpn`` seeded, with calibrated-then-randomised BatchNorm so that it
   gives confident, spread detections), converted with ``checkpoints_convert``, on the six parity coco128
   images (``--extra-images N`` adds the next N train2017 images) with torchvision's own transform output
   (canvases 800x1088 and 1088x800). The same float32 variables run with ``model.dtype="float32"`` and
   ``"bfloat16"``. As a yardstick, torchvision's model is run the same way in float32 and under
   ``torch.autocast("cpu", dtype=torch.bfloat16)``: how much bfloat16 moves *this* network's detections
   whatever the framework. (A random network with randomised BatchNorm amplifies perturbations layer after
   layer -- rounding only its weights to bfloat16 already moves the C5 features by ~8% -- so this is a
   pessimistic case.)
2. A trained model (``--trained-run``, default ``output/quickstart`` when it holds a checkpoint: the
   quickstart run of ``configs/quickstart.py``): ``jaxdet.evaluate`` on its synthetic val split in float32 and
   bfloat16, real ground truth, COCO box AP.

Printed for 1. (and written as JSON with ``--output``), for jaxdet and for torchvision, bf16 against f32:

* FPN features (jaxdet): max |bf16 - f32| relative to max |f32| per level;
* detections: the f32 detections matched one to one to a bf16 detection of the same class with IoU >= 0.5
  (greedy, in descending f32 score): the matched fraction, and over the matched pairs the max / median /
  95th percentile box coordinate difference (canvas pixels) and score difference;
* pseudo-ground-truth AP: the f32 detections scoring >= ``--gt-score`` (0.5) are the ground truth, the bf16
  detections are evaluated against them with pycocotools (box AP, AP50, AP75 in percent; f32 against itself
  scores 100);
* the jitted jaxdet model's seconds per image (batch 1, model only, after one warm-up call per canvas) for
  each dtype -- indicative only; ``python -m jaxdet.benchmark`` measures end to end.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from checkpoints_convert.torchvision_detector import convert_fasterrcnn_resnet50_fpn  # noqa: E402
from jaxdet.config import load_config  # noqa: E402
from jaxdet.engine.checkpoint import apply_meta_to_config  # noqa: E402
from jaxdet.modeling.build import build_detector  # noqa: E402
from tests.convert.parity_utils import (  # noqa: E402  (the parity tests' reference model)
    FASTER_RCNN_IMAGES as IMAGES, TV_MEAN01, TV_STD01, _load_image, _reference_model, _run_torchvision)

COCO128 = os.path.join(os.path.dirname(REPO), "shared", "data", "coco128")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [N, 4] x b [M, 4] -> [N, M]."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), -1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def match(ref: dict, other: dict, iou_thresh: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (i in ref, j in other): same class, IoU >= ``iou_thresh``, ref in descending
    score order taking its highest-IoU unmatched partner."""
    iou = iou_matrix(ref["boxes"], other["boxes"]) * (ref["classes"][:, None] == other["classes"][None])
    used = np.zeros(len(other["boxes"]), bool)
    pairs = []
    for i in np.argsort(-ref["scores"], kind="stable"):
        if not len(used):
            break
        cand = np.where(used, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_thresh:
            used[j] = True
            pairs.append((int(i), j))
    return pairs


def pseudo_gt_ap(per_image_ref: list[dict], per_image_pred: list[dict], sizes: list[tuple[int, int]],
                 gt_score: float) -> dict:
    """COCO box AP (percent) of ``per_image_pred`` against the ``per_image_ref`` detections scoring >= gt_score."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    classes = sorted({int(c) for d in per_image_ref + per_image_pred for c in d["classes"]})
    gt = {"images": [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(sizes)],
          "categories": [{"id": c + 1} for c in classes], "annotations": []}
    dets = []
    for i, (ref, pred) in enumerate(zip(per_image_ref, per_image_pred)):
        for b, s, c in zip(ref["boxes"], ref["scores"], ref["classes"]):
            if s >= gt_score:
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                          "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(pred["boxes"], pred["scores"], pred["classes"]):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets) if dets else COCO(), "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": 100 * ev.stats[0], "AP50": 100 * ev.stats[1], "AP75": 100 * ev.stats[2],
            "num_gt": len(gt["annotations"])}


def compare(ref: list[dict], other: list[dict], sizes: list[tuple[int, int]], gt_score: float) -> dict:
    """bf16 (``other``) against f32 (``ref``) detections, per image lists of ``{"boxes", "scores", "classes"}``:
    matched fraction, box / score differences of the matched pairs, pseudo-ground-truth AP."""
    box_d, score_d, n_matched = [], [], 0
    for r, o in zip(ref, other):
        pairs = match(r, o)
        n_matched += len(pairs)
        box_d += [float(np.abs(r["boxes"][i] - o["boxes"][j]).max()) for i, j in pairs]
        score_d += [abs(float(r["scores"][i]) - float(o["scores"][j])) for i, j in pairs]
    stats = lambda x: {"max": float(np.max(x)), "median": float(np.median(x)), "p95": float(np.percentile(x, 95))} \
        if len(x) else {}
    n_ref = sum(len(r["boxes"]) for r in ref)
    return {"detections_f32": n_ref, "detections_bf16": sum(len(o["boxes"]) for o in other),
            "matched_fraction": n_matched / max(n_ref, 1), "box_diff_px": stats(box_d), "score_diff": stats(score_d),
            "pseudo_gt_AP": pseudo_gt_ap(ref, other, sizes, gt_score)}


def trained_model_ap(run: str) -> dict:
    """COCO box AP of the checkpoint in ``run`` (a quickstart output folder) on its val split, f32 and bf16."""
    import logging
    import tempfile

    from jaxdet.evaluate import evaluate

    out = {}
    for dtype in ("float32", "bfloat16"):
        config = load_config(os.path.join(REPO, "configs", "quickstart.py"))
        config.model.dtype = dtype
        config.data.root = os.path.join(REPO, config.data.root)  # the shipped config's root is relative
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            m = evaluate(config, run, output_dir=tmp)
            logging.getLogger().handlers.clear()
        out[dtype] = {k: float(m[k]) for k in ("AP", "AP50", "AP75")}
        out[dtype]["s_per_image_incl_compile"] = float(m["inference_s_per_image"])
        print(f"trained model {run}, {dtype}: box AP {m['AP']:.2f} AP50 {m['AP50']:.2f} AP75 {m['AP75']:.2f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco128", default=COCO128, help="coco128 folder (COCO layout)")
    p.add_argument("--extra-images", type=int, default=0, help="more train2017 images beyond the 6 parity ones")
    p.add_argument("--gt-score", type=float, default=0.5, help="f32 score threshold of the pseudo ground truth")
    p.add_argument("--trained-run", default=os.path.join(REPO, "output", "quickstart"),
                   help="a quickstart run folder with a checkpoint (skipped if it has none)")
    p.add_argument("--no-torch", action="store_true", help="skip the torchvision bf16 yardstick")
    p.add_argument("--output", default=None, help="JSON file for the numbers")
    args = p.parse_args(argv)

    import pathlib

    import torch

    torch.set_num_threads(2)
    root = pathlib.Path(args.coco128)
    names = list(IMAGES)
    if args.extra_images:
        pool = sorted(f for f in os.listdir(root / "train2017") if f not in names)
        names += pool[:args.extra_images]

    t0 = time.perf_counter()
    reference = _reference_model(root)
    variables, meta = convert_fasterrcnn_resnet50_fpn(reference.state_dict(), norm_eps=1e-5, source="parity reference")
    config = load_config(os.path.join(REPO, "configs", "faster_rcnn.py"))
    apply_meta_to_config(config, meta, meta["source"])
    models = {}
    for dtype in ("float32", "bfloat16"):
        c = copy.deepcopy(config)
        c.model.dtype = dtype
        model = build_detector(c.model, meta["num_classes"])
        models[dtype] = jax.jit(lambda v, b, m=model: m.apply(v, b, train=False, mutable=["intermediates"]))
    variables = jax.device_put(variables)
    print(f"reference model and conversion: {time.perf_counter() - t0:.1f} s", flush=True)

    per = {"float32": [], "bfloat16": []}
    per_tv = {"float32": [], "bfloat16": []}
    feat_err: dict[str, float] = {}
    times = {"float32": [], "bfloat16": []}
    warm = set()
    sizes = []
    for name in names:
        image = _load_image(root / "train2017" / name)
        with torch.no_grad():
            image_list, _ = reference.transform([image])
        canvas = tuple(image_list.tensors.shape[2:])
        pixels = (image_list.tensors[0].numpy().transpose(1, 2, 0) * TV_STD01 + TV_MEAN01) * 255.0
        batch = {"image": jnp.asarray(pixels[None]),
                 "image_size": jnp.asarray([image_list.image_sizes[0]], jnp.int32)}
        feats = {}
        for dtype, fn in models.items():
            if (dtype, canvas) not in warm:  # compile (and warm up) once per canvas
                jax.block_until_ready(fn(variables, batch))
                warm.add((dtype, canvas))
            t = time.perf_counter()
            dets, inter = jax.block_until_ready(fn(variables, batch))
            times[dtype].append(time.perf_counter() - t)
            dets = jax.device_get(dets)
            assert dets["boxes"].dtype == np.float32 and dets["scores"].dtype == np.float32
            v = dets["valid"][0]
            per[dtype].append({k: np.asarray(dets[k][0][v]) for k in ("boxes", "scores", "classes")})
            feats[dtype] = {k: np.asarray(x, np.float32) for k, x in inter["intermediates"]["features"][0].items()}
        for k, f32 in feats["float32"].items():
            rel = float(np.abs(feats["bfloat16"][k] - f32).max() / np.abs(f32).max())
            feat_err[k] = max(feat_err.get(k, 0.0), rel)
        if not args.no_torch:
            for key, ctx in (("float32", contextlib.nullcontext()),
                             ("bfloat16", torch.autocast("cpu", dtype=torch.bfloat16))):
                with ctx:
                    d = _run_torchvision(reference, image_list)[3]
                per_tv[key].append({"boxes": d["boxes"].float().numpy(), "scores": d["scores"].float().numpy(),
                                    "classes": d["labels"].numpy() - 1})
        sizes.append(tuple(int(s) for s in image_list.image_sizes[0]))
        one = compare(per["float32"][-1:], per["bfloat16"][-1:], sizes[-1:], args.gt_score)
        print(f"{name} canvas {canvas}: jaxdet bf16 vs f32: {one['matched_fraction']:.0%} of "
              f"{one['detections_f32']} detections matched, box diff {one['box_diff_px']}", flush=True)

    result = {
        "images": names,
        "jaxdet": {"feature_rel_err": feat_err, **compare(per["float32"], per["bfloat16"], sizes, args.gt_score),
                   "model_s_per_image": {d: float(np.median(t)) for d, t in times.items()}},
        "pseudo_gt_score": args.gt_score,
    }
    assert compare(per["float32"], per["float32"], sizes, args.gt_score)["pseudo_gt_AP"]["AP"] > 99.9
    if not args.no_torch:
        result["torchvision_autocast"] = compare(per_tv["float32"], per_tv["bfloat16"], sizes, args.gt_score)
    if args.trained_run and os.path.isdir(os.path.join(args.trained_run, "checkpoints")):
        result["trained_model"] = {"run": args.trained_run, **trained_model_ap(args.trained_run)}
    print(json.dumps(result, indent=1, default=float))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
