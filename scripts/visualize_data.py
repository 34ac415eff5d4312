"""Draw the ground truth of training batches *after* the training transforms, to check the input pipeline.

    python scripts/visualize_data.py --config configs/faster_rcnn.py --config.data.root=/path/to/coco \\
        --output vis_data [--num-batches 4] [--split train|val] [--start 0]

The batches come from the training loader itself (`jaxdet.data.pipeline.make_train_iterator` for ``train``,
`make_eval_iterator` for ``val``) with the config's seed, canvases, resize scales, flip probability, channel
order and ``max_instances``, exactly what ``python -m jaxdet.train`` feeds the model at steps ``start ..
start + num_batches - 1``. (As detectron2's ``tools/visualize_data.py --source dataloader`` and MMDetection's
``tools/analysis_tools/browse_dataset.py``.)

Each image of a batch becomes ``<output>/step<k>_<i>_img<image id>[_flip].png`` (``_flip`` when the loader
flipped it): the whole padded canvas, with

- each valid ground-truth box (``gt_valid``) outlined in its class colour and tagged with the class name
  (crowd regions tagged ``name (crowd)``);
- the resized image's extent (``image_size``) outlined in white, the zero padding (bottom/right) outside it;
- a log line per image gives its resized size and object count.

BGR configs (MSRA weights) are converted back to RGB for display. Any ``--config.x=y`` flag overrides the config.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from typing import Sequence

import numpy as np

log = logging.getLogger("visualize_data")

__all__ = ["draw_batch", "visualize", "main"]


def draw_batch(batch: dict, class_names: Sequence[str], channel_order: str = "RGB") -> list[np.ndarray]:
    """Draws one batch of the data contract: a list of B uint8 [H, W, 3] RGB canvases with the valid ground
    truth (boxes in canvas pixels, see the module docstring) and the ``image_size`` extent.

    Raises:
      ValueError: a class id outside ``class_names``.
    """
    from PIL import Image, ImageDraw

    from jaxdet.visualization import draw_instances

    out = []
    for b in range(batch["image"].shape[0]):
        img = np.asarray(batch["image"][b])
        if channel_order == "BGR":
            img = img[:, :, ::-1]
        img = np.ascontiguousarray(img)
        valid = np.asarray(batch["gt_valid"][b], bool)
        classes = np.asarray(batch["gt_classes"][b])[valid]
        crowd = np.asarray(batch["gt_is_crowd"][b], bool)[valid]
        if classes.size and (classes.min() < 0 or classes.max() >= len(class_names)):
            raise ValueError(f"batch image {b}: class id {int(classes.max())} is outside the "
                             f"{len(class_names)} classes")
        labels = [f"{class_names[c]} (crowd)" if cr else str(class_names[c]) for c, cr in zip(classes, crowd)]
        h, w = (int(v) for v in batch["image_size"][b])
        pil = Image.fromarray(img)
        ImageDraw.Draw(pil).rectangle([0, 0, w - 1, h - 1], outline=(255, 255, 255), width=1)
        drawn = draw_instances(np.asarray(pil), np.asarray(batch["gt_boxes"][b])[valid], classes=classes,
                               labels=labels)
        out.append(drawn)
    return out


def visualize(config, output_dir: str, num_batches: int = 4, split: str = "train", start: int = 0) -> list[str]:
    """Writes the PNGs of ``num_batches`` batches of ``split`` (see the module docstring); returns their paths.

    Raises:
      ValueError: unknown split, ``num_batches`` < 1, or the data errors of the loader (naming the file).
    """
    from PIL import Image
    from tqdm import tqdm

    from jaxdet.data.pipeline import make_eval_iterator, make_train_iterator
    from jaxdet.engine.bootstrap import load_datasets

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    train_ds, val_ds = load_datasets(config, train=split == "train")
    ds = train_ds if split == "train" else val_ds
    c = config
    if split == "train":
        from jaxdet.data.pipeline import TrainPlan

        plan = TrainPlan(ds, c.solver.ims_per_batch, c.input.canvases, c.input.min_size_train,
                         c.input.max_size_train, c.seed, c.input.random_flip)
        it = make_train_iterator(ds, batch_size=c.solver.ims_per_batch, canvases=c.input.canvases,
                                 min_size_train=c.input.min_size_train, max_size_train=c.input.max_size_train,
                                 max_instances=c.data.max_instances, seed=c.seed, start_step=start,
                                 num_steps=num_batches, num_workers=0, channel_order=c.input.format,
                                 flip_prob=c.input.random_flip)
    else:
        plan = None
        it = itertools.islice(make_eval_iterator(ds, batch_size=c.test.ims_per_batch, canvases=c.input.canvases,
                                                 min_size_test=c.input.min_size_test,
                                                 max_size_test=c.input.max_size_test,
                                                 max_instances=c.data.max_instances, channel_order=c.input.format),
                              start, start + num_batches)
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for step, batch in tqdm(it, total=num_batches, desc="visualize", unit="batch"):
        flips = plan[step].flips if plan is not None else np.zeros(len(batch["image"]), bool)
        for i, img in enumerate(draw_batch(batch, ds.class_names, c.input.format)):
            if not batch["image_valid"][i]:
                continue
            iid = int(batch["image_id"][i])
            flip = "_flip" if flips[i] else ""
            path = os.path.join(output_dir, f"step{step:06d}_{i}_img{iid}{flip}.png")
            Image.fromarray(img).save(path)
            paths.append(path)
            log.info("%s: image %d, resized to %s in canvas %s, flipped: %s, %d objects", os.path.basename(path),
                     iid, tuple(int(v) for v in batch["image_size"][i]), img.shape[:2], bool(flips[i]),
                     int(np.sum(batch["gt_valid"][i])))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    from jaxdet.config import load_config
    from jaxdet.engine.logger import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="--config.KEY=VALUE overrides any config field.")
    p.add_argument("--config", required=True, help="config file, e.g. configs/faster_rcnn.py")
    p.add_argument("--output", default="vis_data", help="output folder (default vis_data)")
    p.add_argument("--num-batches", "--num_batches", dest="num_batches", type=int, default=4)
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--start", type=int, default=0, help="first step (train) or batch (val)")
    args = p.parse_args([a for a in argv if not a.startswith("--config.")])
    setup_logging(None)
    config = load_config(args.config, overrides)
    paths = visualize(config, args.output, args.num_batches, args.split, args.start)
    print(f"wrote {len(paths)} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
