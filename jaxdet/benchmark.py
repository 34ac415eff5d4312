"""Benchmark a detector on real images: inference s/image, training s/iteration, compile seconds,
compilation count, peak memory and XLA FLOPs -- optionally side by side with torchvision.

    python -m jaxdet.benchmark --config configs/faster_rcnn.py [--compare torchvision] [--output bench.json]

Method (what is timed, what is not):

* Images: the val split of ``../shared/data/coco128`` when present, else of ``config.data.root``; decoded
  from their JPEG files every time.
* Inference, batch 1, at ``input.min_size_test``/``max_size_test``: the time from the file name to COCO
  result dicts in original-image pixels -- decode, resize, pad (host), the jitted model (device), and
  ``detections_to_coco`` (host). The median over ``--num-images`` images after ``--warmup`` images per canvas.
  Compilation is excluded from it and reported on its own (ahead-of-time ``lower().compile()``: tracing,
  lowering and XLA compilation together).
* Training, batch ``--train-batch`` (2): the median seconds of one jitted train step (data already on the
  device, the result waited for) over ``--train-iters`` iterations after one warm-up iteration; the
  loader is measured separately (``loader_images_per_s``: the grain pipeline alone, images/second).
* FLOPs: XLA's ``cost_analysis()`` of the compiled programs; achieved GFLOP/s = FLOPs / median seconds.
* Compilations: backend compilations counted with ``jax.monitoring`` over the whole run.
* Peak memory: the peak resident set size of a process that runs only that framework (``--only``; with
  ``--compare`` the parent starts one child process per framework for it).
* ``--compare torchvision``: torchvision's ``fasterrcnn_resnet50_fpn`` with the *same* weights (a seeded random
  model converted with ``checkpoints_convert``), FrozenBN and the same trainable layers (stem and res2
  frozen), timed on the same images, alternating image by image with jaxdet, including torchvision's own
  pre- and post-processing. torch uses its default threads.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxdet.data.coco import load_coco
from jaxdet.data.pipeline import collate, instance_target_args, load_example, make_train_iterator
from jaxdet.data.transforms import choose_canvas, resized_size
from jaxdet.engine import parallel
from jaxdet.engine.bootstrap import init_variables
from jaxdet.engine.optim import build_optimizer
from jaxdet.engine.state import create_train_state
from jaxdet.engine.steps import make_predict_step, make_train_step
from jaxdet.evaluation.coco import detections_to_coco
from jaxdet.modeling.build import build_detector, trainable_mask

log = logging.getLogger("jaxdet.benchmark")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COMPILES = []


def _count_compiles(event: str, duration: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(duration)


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MiB: ``VmHWM`` on Linux (per address space, so a child does not
    inherit its parent's peak as ``ru_maxrss`` does across fork+exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def benchmark_dataset(config):
    """The val images: coco128 when it is beside the repository, else ``config.data``'s val split."""
    coco128 = os.path.join(os.path.dirname(REPO), "shared", "data", "coco128")
    if os.path.isdir(coco128):
        return load_coco(os.path.join(coco128, "annotations", "instances_val2017.json"),
                         os.path.join(coco128, "val2017"), skip_empty=False)
    root = config.data.root
    return load_coco(os.path.join(root, config.data.val_json), os.path.join(root, config.data.val_images),
                     skip_empty=False)


class JaxdetRunner:
    """jaxdet inference and training, compiled ahead of time per canvas."""

    def __init__(self, config, num_classes: int, variables=None):
        self.config = config
        self.model = build_detector(config.model, num_classes)
        self.mesh = parallel.make_mesh(jax.devices()[:1])
        self.variables = variables if variables is not None else init_variables(self.model, config, 0)
        self.variables = parallel.replicate(self.variables, self.mesh)
        self._predict = make_predict_step(self.model, self.mesh)
        self._compiled = {}
        self.compile_s, self.flops = {}, {}

    def _example(self, record, canvas_index):
        c = self.config.input
        return load_example(record, canvas_hw=c.canvases[canvas_index], min_size=c.min_size_test,
                            max_size=c.max_size_test, flip=False, max_instances=self.config.data.max_instances,
                            channel_order=c.format)

    def canvas_of(self, record) -> int:
        """Index into ``input.canvases`` of the canvas the record's test-time resize lands in."""
        c = self.config.input
        return choose_canvas(*resized_size(record["height"], record["width"], c.min_size_test, c.max_size_test),
                             c.canvases)

    def infer(self, record, category_ids):
        """File -> COCO result dicts (original pixels). Compiles on the first image of a canvas."""
        ci = self.canvas_of(record)
        batch = collate([self._example(record, ci)])
        x = parallel.shard_batch({k: batch[k] for k in ("image", "image_size")}, self.mesh)
        if ci not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[ci] = self._predict.lower(self.variables, x).compile()
            self.compile_s[f"inference_{ci}"] = time.perf_counter() - t0
            self.flops["inference"] = _flops(self._compiled[ci])
        out = jax.device_get(self._compiled[ci](self.variables, x))
        return detections_to_coco(batch["image_id"], out["boxes"], out["scores"], out["classes"], out["valid"],
                                  batch["scale"], batch["orig_size"], category_ids, batch["image_valid"],
                                  image_size=batch["image_size"])

    def train_seconds(self, dataset, batch_size: int, iters: int) -> dict:
        """Median seconds of the train step on real batches (first canvas), plus compile time and FLOPs."""
        c = self.config
        v = jax.device_get(self.variables)
        trainable = trainable_mask(v["params"], c.model.backbone.freeze_at)
        tx, schedule = build_optimizer(c.solver, v["params"], trainable)
        state = parallel.replicate(create_train_state(v, tx, jax.random.key_data(jax.random.key(0))), self.mesh)
        step = make_train_step(self.model, tx, schedule, self.mesh, trainable=trainable)
        it = make_train_iterator(dataset, batch_size=batch_size, canvases=c.input.canvases,
                                 min_size_train=c.input.min_size_train, max_size_train=c.input.max_size_train,
                                 max_instances=c.data.max_instances, seed=0, channel_order=c.input.format,
                                 **instance_target_args(c, dataset))
        first = None
        batches = []
        for _, b in it:
            first = first or b["image"].shape
            if b["image"].shape == first:
                batches.append(parallel.shard_batch(b, self.mesh))
            if len(batches) == iters + 1:
                break
        t0 = time.perf_counter()  # tracing + lowering + XLA compilation
        compiled = step.lower(state, batches[0]).compile()
        self.compile_s["train"] = time.perf_counter() - t0
        self.flops["train"] = _flops(compiled)
        times = []
        for b in batches:
            t0 = time.perf_counter()
            state, metrics = compiled(state, b)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        return {"train_s_per_iter": statistics.median(times[1:]), "train_canvas": list(first[1:3])}


def loader_images_per_s(config, dataset, batch_size: int, num_batches: int) -> float:
    """Images/second of the training input pipeline alone (grain, ``data.num_workers`` workers)."""
    c = config
    it = make_train_iterator(dataset, batch_size=batch_size, canvases=c.input.canvases,
                             min_size_train=c.input.min_size_train, max_size_train=c.input.max_size_train,
                             max_instances=c.data.max_instances, seed=1, num_workers=c.data.num_workers,
                             prefetch=c.data.prefetch, channel_order=c.input.format, num_steps=num_batches + 1)
    next(it)  # start-up (worker processes) excluded
    t0 = time.perf_counter()
    n = sum(b["image"].shape[0] for _, b in it)
    return n / (time.perf_counter() - t0)


class TorchvisionRunner:
    """torchvision ``fasterrcnn_resnet50_fpn`` (v1) with FrozenBN, stem and res2 frozen, random seeded weights."""

    def __init__(self, config, seed: int = 0):
        import torch
        import torchvision
        from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
        from torchvision.ops import FrozenBatchNorm2d

        torch.manual_seed(seed)
        body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        backbone = _resnet_fpn_extractor(body, trainable_layers=5 - config.model.backbone.freeze_at)
        c = config.input
        self.model = torchvision.models.detection.FasterRCNN(
            backbone, num_classes=91, min_size=c.min_size_test, max_size=c.max_size_test)
        self.model.eval()
        self.torch = torch

    def converted_variables(self):
        """The same weights as jaxdet variables (90 foreground classes = COCO ids 1..90) and their meta."""
        from checkpoints_convert.torchvision_detector import convert_fasterrcnn_resnet50_fpn

        sd = {k: v.detach().numpy() for k, v in self.model.state_dict().items()}
        return convert_fasterrcnn_resnet50_fpn(sd, category_ids=None, norm_eps=0.0, source="benchmark model")

    def infer(self, path):
        """File -> torchvision's detections (its own transform and post-processing), numpy dict."""
        from PIL import Image

        img = np.asarray(Image.open(path).convert("RGB"))
        x = self.torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        with self.torch.no_grad():
            out = self.model([x])[0]
        return {k: v.numpy() for k, v in out.items()}

    def train_seconds(self, dataset, batch_size: int, iters: int, config) -> float:
        """Median seconds of one SGD step at ``input.min_size_train`` after one warm-up step."""
        from PIL import Image

        torch = self.torch
        model = self.model
        model.train()
        model.transform.min_size = tuple(config.input.min_size_train)
        model.transform.max_size = config.input.max_size_train
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                              weight_decay=1e-4)
        recs = [r for r in dataset.records if np.any(~r["is_crowd"])]
        times = []
        for i in range(iters + 1):
            imgs, targets = [], []
            for r in recs[i * batch_size:(i + 1) * batch_size]:
                a = np.asarray(Image.open(r["file_name"]).convert("RGB"))
                imgs.append(torch.from_numpy(a).permute(2, 0, 1).float() / 255.0)
                keep = ~r["is_crowd"]
                targets.append({"boxes": torch.from_numpy(r["boxes"][keep]),
                                "labels": torch.from_numpy(np.asarray(dataset.category_ids)[r["classes"][keep]])})
            t0 = time.perf_counter()
            loss = sum(model(imgs, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        model.eval()
        return statistics.median(times[1:])


def run(config, args) -> dict:
    """Runs the benchmark; returns the results dict (see the module docstring)."""
    jax.monitoring.register_event_duration_secs_listener(_count_compiles)
    dataset = benchmark_dataset(config)
    records = dataset.records[: args.warmup + args.num_images]
    tv = TorchvisionRunner(config) if args.compare == "torchvision" or args.only == "torchvision" else None
    variables = None
    category_ids = dataset.category_ids
    num_classes = dataset.num_classes
    if tv is not None:  # both frameworks run the same weights: 90 foreground classes indexed by COCO id
        from jaxdet.engine.checkpoint import apply_meta_to_config

        variables, meta = tv.converted_variables()
        apply_meta_to_config(config, meta, "benchmark model")
        category_ids, num_classes = meta["category_ids"], meta["num_classes"]
    jd = JaxdetRunner(config, num_classes, variables) if args.only != "torchvision" else None
    res = {"config": args.config_path, "images": dataset.json_path, "num_images": len(records) - args.warmup,
           "devices": f"{jax.device_count()} x {jax.devices()[0].platform}", "jax": jax.__version__}
    t_j, t_t = [], []
    for i, r in enumerate(records):
        if jd is not None:
            if jd.canvas_of(r) not in jd._compiled:
                jd.infer(r, category_ids)  # compile (timed separately) and a first run
            t0 = time.perf_counter()
            jd.infer(r, category_ids)
            if i >= args.warmup:
                t_j.append(time.perf_counter() - t0)
        if tv is not None:
            t0 = time.perf_counter()
            tv.infer(r["file_name"])
            if i >= args.warmup:
                t_t.append(time.perf_counter() - t0)
    train_ds = dataset
    if jd is not None:
        res["jaxdet"] = {"inference_s_per_image": statistics.median(t_j)}
        if args.train_iters > 0:
            res["jaxdet"].update(jd.train_seconds(train_ds, args.train_batch, args.train_iters))
        res["jaxdet"]["compile_s"] = jd.compile_s
        res["jaxdet"]["xla_gflops"] = {k: v / 1e9 for k, v in jd.flops.items()}
        res["jaxdet"]["achieved_gflops_per_s"] = {
            "inference": jd.flops.get("inference", np.nan) / 1e9 / res["jaxdet"]["inference_s_per_image"],
            "train": jd.flops.get("train", np.nan) / 1e9 / res["jaxdet"].get("train_s_per_iter", np.nan)}
        res["jaxdet"]["compilations"] = len(_COMPILES)
        if args.train_iters > 0:
            res["jaxdet"]["loader_images_per_s"] = loader_images_per_s(config, train_ds, args.train_batch, 10)
    if tv is not None:
        res["torchvision"] = {"inference_s_per_image": statistics.median(t_t)}
        if args.train_iters > 0:
            res["torchvision"]["train_s_per_iter"] = tv.train_seconds(train_ds, args.train_batch, args.train_iters,
                                                                      config)
    if args.only:
        res[args.only]["peak_rss_mb"] = peak_rss_mb()
    if jd is not None and tv is not None:
        res["ratio_jaxdet_over_torchvision"] = {
            k: res["jaxdet"][k] / res["torchvision"][k] for k in ("inference_s_per_image", "train_s_per_iter")
            if k in res["torchvision"]}
    return res


def _child_peak_memory(argv: list[str], which: str, train_iters: int = 2) -> float:
    """Peak RSS (MiB) of a child process benchmarking only ``which`` (with 2 training iterations, none when
    ``train_iters`` is 0: inference only)."""
    argv = [a for a in argv if not a.startswith(("--compare", "--output", "--only"))]
    proc = subprocess.run([sys.executable, "-m", "jaxdet.benchmark", *argv[1:], f"--only={which}",
                           "--num_images=2", "--warmup=0", f"--train_iters={min(train_iters, 2)}"],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"benchmark child ({which}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])[which]["peak_rss_mb"]


def print_table(res: dict) -> None:
    """Prints the results as a table (frameworks side by side, with the ratio)."""
    keys = ("inference_s_per_image", "train_s_per_iter", "peak_rss_mb")
    cols = [k for k in ("jaxdet", "torchvision") if k in res]
    print(f"{'':28}" + "".join(f"{c:>14}" for c in cols) + ("   jaxdet/torchvision" if len(cols) == 2 else ""))
    for k in keys:
        vals = [res[c].get(k) for c in cols]
        row = f"{k:28}" + "".join(f"{v:>14.3f}" if v is not None else f"{'-':>14}" for v in vals)
        if len(cols) == 2 and None not in vals:
            row += f"   {vals[0] / vals[1]:.2f}"
        print(row)
    if "jaxdet" in res:
        j = res["jaxdet"]
        print(f"compile s: {j['compile_s']}  compilations: {j['compilations']}  XLA GFLOP: {j['xla_gflops']}  "
              f"achieved GFLOP/s: {j['achieved_gflops_per_s']}  loader images/s: {j.get('loader_images_per_s', np.nan):.1f}")


def define_flags():
    """The command-line flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
    flags.DEFINE_enum("compare", None, ["torchvision"], "Also benchmark the reference implementation.")
    flags.DEFINE_enum("only", None, ["jaxdet", "torchvision"], "Benchmark one framework (peak memory).")
    flags.DEFINE_integer("num_images", 10, "Timed inference images (after the warm-up ones).")
    flags.DEFINE_integer("warmup", 2, "Untimed images first.")
    flags.DEFINE_integer("train_iters", 5, "Timed training iterations (after one warm-up); 0: inference only.")
    flags.DEFINE_integer("train_batch", 2, "Training batch size.")
    flags.DEFINE_string("output", None, "JSON file for the results.")


def main(argv):
    f = flags.FLAGS
    logging.basicConfig(level=logging.WARNING)
    args = type("Args", (), dict(compare=f.compare, only=f.only, num_images=f.num_images, warmup=f.warmup,
                                 train_iters=f.train_iters, train_batch=f.train_batch,
                                 config_path=config_flags.get_config_filename(f["config"])))
    res = run(f.config, args)
    if f.only:
        print(json.dumps(res))
        return
    for which in ("jaxdet", "torchvision") if f.compare else ("jaxdet",):
        res[which]["peak_rss_mb"] = _child_peak_memory(sys.argv, which, f.train_iters)
    print_table(res)
    if f.output:
        with open(f.output, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
