"""`jaxdet.train` and `jaxdet.evaluate` end to end on real coco128 data with a tiny model."""
from __future__ import annotations

import json
import os

import numpy as np
from pycocotools.coco import COCO

from jaxdet.evaluate import evaluate
from jaxdet.train import train
from tests.engine.tiny import tiny_config


def test_train_checkpoint_resume_and_evaluate(coco128_root, tmp_path):
    out = tmp_path / "run"
    overrides = {"solver.max_iter": 3, "solver.checkpoint_period": 2, "log_period": 1, "test.max_images": 6,
                 "solver.warmup_iters": 0, "solver.base_lr": 0.005}
    metrics = train(tiny_config(coco128_root, str(out), **overrides))
    # artefacts a user looks for
    for f in ("log.txt", "metrics.jsonl", "config.json", "eval/metrics.json", "eval/coco_instances_results.json"):
        assert (out / f).exists(), f
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "3"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    train_records = [r for r in records if "train/loss_total" in r]
    assert [r["iteration"] for r in train_records] == [1, 2, 3]
    for key in ("train/loss_rpn_cls", "train/loss_rpn_reg", "train/loss_cls", "train/loss_box_reg", "train/lr"):
        assert np.isfinite(train_records[-1][key])
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "per_category_AP"} <= set(metrics)

    # resume: the same command with a longer schedule continues from iteration 3
    metrics2 = train(tiny_config(coco128_root, str(out), **{**overrides, "solver.max_iter": 4}))
    log = open(out / "log.txt").read()
    assert "resumed from" in log and "at iteration 3" in log
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "3", "4"]
    assert np.isfinite(metrics2["AP"])

    # evaluate the saved checkpoint: same numbers as the end-of-training evaluation
    ev = evaluate(tiny_config(coco128_root, str(out), **overrides), str(out), str(tmp_path / "inference"))
    assert abs(ev["AP"] - metrics2["AP"]) < 1e-6 and abs(ev["AR100"] - metrics2["AR100"]) < 1e-6
    results = json.load(open(tmp_path / "inference" / "coco_instances_results.json"))
    gt = COCO(str(coco128_root / "annotations" / "instances_val2017.json"))
    for r in results[:50]:  # dataset category ids, boxes inside the original image
        assert r["category_id"] in gt.cats
        img = gt.imgs[r["image_id"]]
        x, y, w, h = r["bbox"]
        assert -1e-3 <= x and x + w <= img["width"] + 1e-3 and -1e-3 <= y and y + h <= img["height"] + 1e-3
