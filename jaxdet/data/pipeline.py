"""Canvas-grouped, deterministic, resumable batching of a `CocoDataset` (host side, grain).

Batches follow the data contract of DESIGN.md §2 (numpy arrays, leading dim = this process's rows):

================  ======================  ================================================================
``image``         [B, H, W, 3] uint8      resized image at the top-left of a zero canvas (H, W)
``image_size``    [B, 2] int32            (height, width) of the resized image before padding
``scale``         [B] float32             resized / original height (``new_h / orig_h``)
``orig_size``     [B, 2] int32            (height, width) of the original image
``image_id``      [B] int64               dataset image id (-1 for eval padding)
``image_valid``   [B] bool                False for the dummy images padding the last eval batch
``gt_boxes``      [B, M, 4] float32       xyxy in canvas pixels (after resize and flip)
``gt_classes``    [B, M] int32            contiguous class ids 0..C-1
``gt_valid``      [B, M] bool             padding mask of the M = ``max_instances`` slots
``gt_is_crowd``   [B, M] bool             crowd regions
``gt_masks``      [B, M, S, S] uint8      only with ``mask_size=S > 0`` (Mask R-CNN): each instance's mask
                                          inside its own box, S x S (`jaxdet.data.instances`)
``gt_keypoints``  [B, M, K, 3] float32    only with ``keypoints=True`` (Keypoint R-CNN): x, y in canvas
                                          pixels, COCO visibility 0/1/2; left/right swapped on flip
================  ======================  ================================================================

Every image of a batch shares one canvas. The canvas of an image is `choose_canvas` of its resized size
at the largest training ``min_size`` (sizes are monotone in ``min_size``, so it fits at every scale), known
from the json alone, so the whole schedule is planned on the host without reading pixels:

* `TrainPlan`: the global batch of step k — its image indices, flip bits and chosen min sizes — is a pure
  function of (seed, k). Epoch e shuffles the images with ``numpy.random.default_rng([seed, e])``; the
  shuffled stream is split into per-canvas buckets and a bucket emits a batch when it holds
  ``batch_size`` images, as detectron2's ``AspectRatioGroupedDataset``. Unlike detectron2 (whose buckets
  carry over into the next epoch), the partial buckets left at the end of an epoch are dropped, so every
  epoch has the same number of batches, ``sum_c floor(n_c / batch_size)``, and step k is found without
  replaying earlier epochs: training can start (resume) at any step.
* `make_train_iterator`: loads this process's rows ``[p * B / P, (p + 1) * B / P)`` of each global batch
  with grain (threads, and worker processes when ``num_workers > 0``).
* `make_eval_iterator`: every image exactly once, in dataset order within each canvas, no flip; a canvas
  bucket emits when full and the leftovers are flushed at the end, padded with dummy images
  (``image_valid=False``).

Config parameters are plain arguments (e.g. ``make_train_iterator(ds, **cfg.data.train)``).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from jaxdet.data import instances as I
from jaxdet.data import transforms as T
from jaxdet.data.coco import CocoDataset

logger = logging.getLogger(__name__)

__all__ = [
    "BatchPlan", "TrainPlan", "train_batches", "eval_batches", "image_canvases", "load_example",
    "dummy_example", "collate", "make_train_iterator", "make_eval_iterator", "instance_target_args",
]

BATCH_KEYS = ("image", "image_size", "scale", "orig_size", "image_id", "image_valid",
              "gt_boxes", "gt_classes", "gt_valid", "gt_is_crowd")

_INFINITE_STEPS = 2 ** 40


def _as_sizes(min_size) -> tuple[int, ...]:
    sizes = (min_size,) if np.isscalar(min_size) else tuple(min_size)
    if not sizes or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"min_size must be a positive int or a non-empty tuple of them, got {min_size!r}")
    return tuple(int(s) for s in sizes)


def _as_canvases(canvases) -> tuple[tuple[int, int], ...]:
    out = tuple((int(h), int(w)) for h, w in canvases)
    if not out:
        raise ValueError("canvases is empty")
    return out


def image_canvases(dataset: CocoDataset, canvases: Sequence[Sequence[int]], min_size, max_size: int) -> np.ndarray:
    """Canvas index (int32 [N]) of every record, from its json size resized at ``max(min_size)``.

    Raises:
      ValueError: an image fits no canvas (the message names its file and resized size).
    """
    canvases = _as_canvases(canvases)
    top = max(_as_sizes(min_size))
    out = np.empty(len(dataset.records), np.int32)
    for i, r in enumerate(dataset.records):
        nh, nw = T.resized_size(r["height"], r["width"], top, max_size)
        try:
            out[i] = T.choose_canvas(nh, nw, canvases)
        except ValueError as e:
            raise ValueError(f"{r['file_name']} ({r['height']}x{r['width']}): {e}") from None
    return out


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """What the global batch of one step is made of (all arrays [B], B the global batch size).

    Attributes:
      step: the global step.
      canvas: index into the configured canvases.
      indices: int64 indices into ``dataset.records``; -1 for eval padding.
      flips: bool, horizontal flip per image.
      min_sizes: int32, the short-side target per image.
    """

    step: int
    canvas: int
    indices: np.ndarray
    flips: np.ndarray
    min_sizes: np.ndarray


class TrainPlan:
    """Random access to the training schedule: ``plan[k]`` is the `BatchPlan` of global step k.

    Args:
      dataset: the training `CocoDataset` (only image sizes are read).
      batch_size: global batch size B (all processes together).
      canvases: list of (H, W) canvases.
      min_size_train: short-side target, an int or a tuple to choose from uniformly per image
        (multi-scale training, as torchvision's ``min_size`` tuple / detectron2's ``MIN_SIZE_TRAIN`` with
        ``choice`` sampling).
      max_size: cap on the long side.
      seed: the data seed.
      flip_prob: probability of a horizontal flip per image (0.5 in torchvision and detectron2).

    Raises:
      ValueError: an image fits no canvas, or no canvas has as many as B images (no batch can be formed).
    """

    def __init__(self, dataset: CocoDataset, batch_size: int, canvases, min_size_train, max_size: int,
                 seed: int, flip_prob: float = 0.5):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.canvases = _as_canvases(canvases)
        self.min_sizes = _as_sizes(min_size_train)
        self.max_size = int(max_size)
        self.seed = int(seed)
        self.flip_prob = float(flip_prob)
        self.canvas_of = image_canvases(dataset, self.canvases, self.min_sizes, self.max_size)
        counts = np.bincount(self.canvas_of, minlength=len(self.canvases))
        self.batches_per_epoch = int(np.sum(counts // self.batch_size))
        if self.batches_per_epoch == 0:
            raise ValueError(f"{dataset.name}: no canvas holds {self.batch_size} images (images per canvas "
                             f"{counts.tolist()} for canvases {list(self.canvases)}); lower the batch size")
        self._cache: dict[int, tuple] = {}
        self._lock = threading.Lock()  # grain reads items from several threads

    def __getstate__(self):  # pickled into grain worker processes: no lock, no cache
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _epoch(self, epoch: int):
        with self._lock:
            hit = self._cache.get(epoch)
            if hit is None:
                hit = self._compute_epoch(epoch)
                if len(self._cache) >= 2:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[epoch] = hit
            return hit

    def _compute_epoch(self, epoch: int):
        n = self.canvas_of.shape[0]
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(n)
        flips = rng.random(n) < self.flip_prob
        sizes = np.asarray(self.min_sizes, np.int32)[rng.integers(len(self.min_sizes), size=n)]
        canv = self.canvas_of[perm]
        B = self.batch_size
        batches = []  # (position in the stream where the batch completes, canvas, stream positions)
        for c in range(len(self.canvases)):
            pos = np.flatnonzero(canv == c)
            nb = pos.shape[0] // B
            for j in range(nb):
                members = pos[j * B:(j + 1) * B]
                batches.append((int(members[-1]), c, members))
        batches.sort(key=lambda t: t[0])
        return perm, flips, sizes, batches

    def __getitem__(self, step: int) -> BatchPlan:
        step = int(step)
        if step < 0:
            raise IndexError(f"negative step {step}")
        epoch, k = divmod(step, self.batches_per_epoch)
        perm, flips, sizes, batches = self._epoch(epoch)
        _, c, members = batches[k]
        return BatchPlan(step=step, canvas=c, indices=perm[members].astype(np.int64),
                         flips=flips[members].copy(), min_sizes=sizes[members].copy())


def train_batches(dataset: CocoDataset, batch_size: int, canvases, min_size_train, max_size: int, seed: int,
                  step_start: int = 0, num_steps: int | None = None, flip_prob: float = 0.5) -> Iterator[BatchPlan]:
    """Yields the training `BatchPlan` of steps ``step_start, step_start + 1, ...`` (forever unless num_steps).

    The plan of step k is the same whatever ``step_start`` is (see `TrainPlan`).
    """
    plan = TrainPlan(dataset, batch_size, canvases, min_size_train, max_size, seed, flip_prob)
    step = int(step_start)
    end = None if num_steps is None else step + int(num_steps)
    while end is None or step < end:
        yield plan[step]
        step += 1


def eval_batches(dataset: CocoDataset, batch_size: int, canvases, min_size_test: int,
                 max_size_test: int) -> list[BatchPlan]:
    """The evaluation schedule: every record exactly once, no flip, batches of one canvas each.

    Images are taken in dataset order into per-canvas buckets; a full bucket is a batch, and at the end
    the non-empty buckets are emitted in canvas order, padded with index -1 (dummy images).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    canvases = _as_canvases(canvases)
    min_size = max(_as_sizes(min_size_test))
    canvas_of = image_canvases(dataset, canvases, min_size, max_size_test)
    buckets: dict[int, list[int]] = {c: [] for c in range(len(canvases))}
    out: list[BatchPlan] = []

    def emit(c, members):
        idx = np.full(batch_size, -1, np.int64)
        idx[:len(members)] = members
        out.append(BatchPlan(step=len(out), canvas=c, indices=idx, flips=np.zeros(batch_size, bool),
                             min_sizes=np.full(batch_size, min_size, np.int32)))

    for i, c in enumerate(canvas_of.tolist()):
        buckets[c].append(i)
        if len(buckets[c]) == batch_size:
            emit(c, buckets[c])
            buckets[c] = []
    for c in range(len(canvases)):
        if buckets[c]:
            emit(c, buckets[c])
    return out


def load_example(record: dict[str, Any], *, canvas_hw: Sequence[int], min_size: int, max_size: int, flip: bool,
                 max_instances: int, channel_order: str = "RGB", mask_size: int = 0,
                 keypoint_flip: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Decodes, resizes, (flips), pads one record into the per-image part of the batch contract.

    The image is resized as torchvision's ``GeneralizedRCNNTransform`` (`transforms.resized_size`),
    boxes scaled by the integer-size ratios (`transforms.resize_boxes`), then flipped within the resized
    width, padded bottom/right into the canvas, ground truth padded to ``max_instances``.

    Returns:
      dict with ``image`` uint8 [H, W, 3], ``image_size`` int32 [2], ``scale`` float32 [],
      ``orig_size`` int32 [2], ``image_id`` int64 [], ``image_valid`` bool [], ``gt_boxes`` float32 [M, 4],
      ``gt_classes`` int32 [M], ``gt_valid`` bool [M], ``gt_is_crowd`` bool [M]; with ``mask_size`` S > 0
      also ``gt_masks`` uint8 [M, S, S] (from ``record["segmentations"]``), with ``keypoint_flip`` (the
      left/right permutation, `instances.keypoint_flip_indices`) also ``gt_keypoints`` float32 [M, K, 3]
      (from ``record["keypoints"]``).

    Raises:
      ValueError: the image cannot be decoded, or its decoded size differs from the json's (after EXIF
        rotation, as detectron2's ``check_image_size``); the message names the file.
      FileNotFoundError: the image file vanished.
    """
    image = T.decode_image(record["file_name"], channel_order)
    h, w = image.shape[:2]
    if (h, w) != (record["height"], record["width"]):
        raise ValueError(f"{record['file_name']}: decoded size {h}x{w} differs from the annotation's "
                         f"{record['height']}x{record['width']} (HxW)")
    nh, nw = T.resized_size(h, w, min_size, max_size)
    image = T.resize_image(image, nh, nw)
    boxes = T.resize_boxes(record["boxes"], (h, w), (nh, nw))
    if flip:
        image, boxes = T.hflip(image, boxes, nw)
    image = T.pad_to_canvas(image, canvas_hw)
    gt_boxes, gt_classes, gt_valid, gt_crowd = T.pad_instances(boxes, record["classes"], record["is_crowd"],
                                                               max_instances)
    extra = {}
    if mask_size or keypoint_flip is not None:
        keep = T.select_instances(record["boxes"], record["is_crowd"], max_instances)  # pad_instances' rows
        if mask_size:
            extra["gt_masks"] = I.instance_masks(record["segmentations"], record["boxes"], keep, mask_size, (h, w),
                                                 flip, max_instances)
        if keypoint_flip is not None:
            if "keypoints" not in record:
                raise ValueError(f"{record['file_name']}: keypoints requested but the annotation file declares none")
            kp = I.resize_keypoints(record["keypoints"], (h, w), (nh, nw))
            if flip:
                kp = I.hflip_keypoints(kp, nw, keypoint_flip)
            extra["gt_keypoints"] = I.pad_rows(kp, keep, max_instances)
    return dict(
        image=image,
        image_size=np.array([nh, nw], np.int32),
        scale=np.float32(nh / h),
        orig_size=np.array([h, w], np.int32),
        image_id=np.int64(record["image_id"]),
        image_valid=np.bool_(True),
        gt_boxes=gt_boxes, gt_classes=gt_classes, gt_valid=gt_valid, gt_is_crowd=gt_crowd, **extra,
    )


def dummy_example(canvas_hw: Sequence[int], max_instances: int, mask_size: int = 0,
                  num_keypoints: int = 0) -> dict[str, np.ndarray]:
    """A padding image for the last eval batch: zero canvas, ``image_valid=False``, ``image_id=-1``,
    ``image_size = orig_size =`` the canvas size and ``scale=1`` (so nothing downstream divides by 0),
    no ground truth."""
    H, W = int(canvas_hw[0]), int(canvas_hw[1])
    return dict(
        image=np.zeros((H, W, 3), np.uint8),
        image_size=np.array([H, W], np.int32),
        scale=np.float32(1.0),
        orig_size=np.array([H, W], np.int32),
        image_id=np.int64(-1),
        image_valid=np.bool_(False),
        gt_boxes=np.zeros((max_instances, 4), np.float32),
        gt_classes=np.zeros((max_instances,), np.int32),
        gt_valid=np.zeros((max_instances,), bool),
        gt_is_crowd=np.zeros((max_instances,), bool),
        **({"gt_masks": np.zeros((max_instances, mask_size, mask_size), np.uint8)} if mask_size else {}),
        **({"gt_keypoints": np.zeros((max_instances, num_keypoints, 3), np.float32)} if num_keypoints else {}),
    )


def collate(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks per-image dicts into a batch dict (every key gets a leading [B] dim).

    Raises:
      ValueError: the images do not share one canvas.
    """
    shapes = {e["image"].shape for e in examples}
    if len(shapes) != 1:
        raise ValueError(f"collate: images of one batch have different canvases {sorted(shapes)}")
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


# --- grain plumbing: picklable sources and maps, so worker processes can rebuild them. ---

@dataclasses.dataclass(frozen=True)
class _Slim:
    """The per-image fields the loader needs (no segmentations: cheap to pickle into workers)."""

    records: tuple

    @staticmethod
    def of(dataset: CocoDataset, masks: bool = False, keypoints: bool = False) -> "_Slim":
        keys = ("image_id", "file_name", "height", "width", "boxes", "classes", "is_crowd")
        keys += ("segmentations",) * masks + ("keypoints",) * keypoints
        return _Slim(tuple({k: r[k] for k in keys if k in r} for r in dataset.records))


class _TrainSource:
    """Item i -> (global step, row) of this process's slice; resolved through the `TrainPlan`."""

    def __init__(self, plan: TrainPlan, start_step: int, num_steps: int, rows: range):
        self.plan, self.start_step, self.num_steps, self.rows = plan, start_step, num_steps, rows

    def __len__(self):
        return self.num_steps * len(self.rows)

    def __getitem__(self, i):
        i = int(i)
        step = self.start_step + i // len(self.rows)
        row = self.rows[i % len(self.rows)]
        bp = self.plan[step]
        return dict(step=step, index=int(bp.indices[row]), canvas=bp.canvas, flip=bool(bp.flips[row]),
                    min_size=int(bp.min_sizes[row]))


class _EvalSource:
    def __init__(self, plans: list[BatchPlan], rows: range):
        self.plans, self.rows = plans, rows

    def __len__(self):
        return len(self.plans) * len(self.rows)

    def __getitem__(self, i):
        i = int(i)
        bp = self.plans[i // len(self.rows)]
        row = self.rows[i % len(self.rows)]
        return dict(step=bp.step, index=int(bp.indices[row]), canvas=bp.canvas, flip=False,
                    min_size=int(bp.min_sizes[row]))


@dataclasses.dataclass(frozen=True)
class _Load:
    slim: _Slim
    canvases: tuple
    max_size: int
    max_instances: int
    channel_order: str
    mask_size: int = 0
    keypoint_flip: tuple | None = None

    def __call__(self, item):
        canvas_hw = self.canvases[item["canvas"]]
        if item["index"] < 0:
            ex = dummy_example(canvas_hw, self.max_instances, self.mask_size,
                               0 if self.keypoint_flip is None else len(self.keypoint_flip))
        else:
            ex = load_example(self.slim.records[item["index"]], canvas_hw=canvas_hw, min_size=item["min_size"],
                              max_size=self.max_size, flip=item["flip"], max_instances=self.max_instances,
                              channel_order=self.channel_order, mask_size=self.mask_size,
                              keypoint_flip=self.keypoint_flip)
        ex["step"] = np.int64(item["step"])
        return ex


def _rows(batch_size: int, process_index: int, process_count: int) -> range:
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    if batch_size % process_count:
        raise ValueError(f"global batch size {batch_size} is not divisible by process_count={process_count}")
    local = batch_size // process_count
    return range(process_index * local, (process_index + 1) * local)


def instance_target_args(config, dataset: CocoDataset) -> dict[str, Any]:
    """``mask_size`` / ``keypoints`` arguments of the iterators from ``config.data.mask_size`` and
    ``config.data.num_keypoints``.

    Raises:
      ValueError: ``data.num_keypoints`` differs from the K that ``dataset``'s categories declare.
    """
    k = int(config.data.get("num_keypoints", 0))
    if k and k != dataset.num_keypoints:
        raise ValueError(f"data.num_keypoints={k} but {dataset.json_path} declares {dataset.num_keypoints} "
                         "keypoints per instance")
    return {"mask_size": int(config.data.get("mask_size", 0)), "keypoints": k > 0}


def _make_load(dataset: CocoDataset, canvases, max_size: int, max_instances: int, channel_order: str,
               mask_size: int, keypoints: bool) -> _Load:
    if keypoints and not dataset.num_keypoints:
        raise ValueError(f"{dataset.json_path}: keypoints requested (Keypoint R-CNN) but no category declares "
                         "'keypoints' (not a COCO person_keypoints file?)")
    flip = tuple(int(i) for i in I.keypoint_flip_indices(dataset.keypoint_names)) if keypoints else None
    return _Load(_Slim.of(dataset, masks=bool(mask_size), keypoints=keypoints), _as_canvases(canvases),
                 int(max_size), int(max_instances), channel_order, int(mask_size), flip)


def _iterate(source, load: _Load, local_batch: int, num_workers: int, prefetch: int,
             num_threads: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    import grain  # imported here: only the iterators need it

    ds = grain.MapDataset.source(source).map(load).batch(local_batch, batch_fn=collate)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        from absl import flags  # grain's worker processes read absl flags; outside an absl app parse defaults

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=prefetch))
    it = iter(it_ds)
    try:
        for batch in it:
            step = int(batch.pop("step")[0])
            yield step, batch
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def make_train_iterator(dataset: CocoDataset, *, batch_size: int, canvases, min_size_train, max_size_train: int,
                        max_instances: int = 100, seed: int = 0, start_step: int = 0,
                        num_steps: int | None = None, process_index: int = 0, process_count: int = 1,
                        num_workers: int = 0, prefetch: int = 2, num_threads: int = 2,
                        channel_order: str = "RGB", flip_prob: float = 0.5, mask_size: int = 0,
                        keypoints: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Training batches ``(step, batch)`` from ``start_step`` on (forever unless ``num_steps``).

    Args:
      dataset: the training `CocoDataset` (normally loaded with ``skip_empty=True``).
      batch_size: global batch size B over all processes; each process gets B / process_count rows.
      canvases: list of (H, W) canvases.
      min_size_train: int or tuple (multi-scale, one drawn per image); max_size_train: long-side cap.
      max_instances: M, ground-truth slots per image.
      seed: data seed; the plan of step k depends only on (seed, k) (see `TrainPlan`).
      start_step: first step (resume).
      num_steps: stop after this many steps (None: 2**40, i.e. forever).
      process_index, process_count: this host's slice of the global batch,
        rows ``[process_index * B / P, (process_index + 1) * B / P)``.
      num_workers: grain worker processes (0: load in this process, with ``num_threads`` threads).
      prefetch: batches buffered (per worker when num_workers > 0).
      num_threads: grain read threads per process.
      channel_order: 'RGB' or 'BGR', as the weights expect.
      flip_prob: horizontal flip probability.
      mask_size: S > 0 adds ``gt_masks`` [B, M, S, S] (Mask R-CNN); keypoints: add ``gt_keypoints``
        [B, M, K, 3] (Keypoint R-CNN; the dataset must declare keypoints).

    Yields:
      (step, batch) with the batch dict of the module docstring, leading dim B / process_count.

    Raises:
      ValueError: bad sizes (see `TrainPlan`), B not divisible by process_count; while iterating, an image
        that cannot be decoded (naming the file).
    """
    rows = _rows(batch_size, process_index, process_count)
    plan = TrainPlan(dataset, batch_size, canvases, min_size_train, max_size_train, seed, flip_prob)
    n = _INFINITE_STEPS if num_steps is None else int(num_steps)
    source = _TrainSource(plan, int(start_step), n, rows)
    load = _make_load(dataset, plan.canvases, max_size_train, max_instances, channel_order, mask_size, keypoints)
    logger.info("train data %s: %d images, %d batches of %d per epoch, canvases %s", dataset.name, len(dataset),
                plan.batches_per_epoch, batch_size, list(plan.canvases))
    return _iterate(source, load, len(rows), num_workers, prefetch, num_threads)


def make_eval_iterator(dataset: CocoDataset, *, batch_size: int, canvases, min_size_test: int, max_size_test: int,
                       max_instances: int = 100, process_index: int = 0, process_count: int = 1,
                       num_workers: int = 0, prefetch: int = 2, num_threads: int = 2,
                       channel_order: str = "RGB", mask_size: int = 0,
                       keypoints: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Evaluation batches ``(batch number, batch)``: every image once, no flip (see `eval_batches`).

    Arguments as `make_train_iterator`; the last batch of each canvas is padded with dummy images
    (``image_valid=False``, ``image_id=-1``, see `dummy_example`). Finite: ``len(eval_batches(...))``
    batches.
    """
    rows = _rows(batch_size, process_index, process_count)
    plans = eval_batches(dataset, batch_size, canvases, min_size_test, max_size_test)
    load = _make_load(dataset, canvases, max_size_test, max_instances, channel_order, mask_size, keypoints)
    return _iterate(_EvalSource(plans, rows), load, len(rows), num_workers, prefetch, num_threads)
