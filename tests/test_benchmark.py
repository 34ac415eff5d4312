"""The benchmark runs end to end on real coco128 images (tiny model) and reports what it promises.
(Its numbers are not asserted: timings belong to the benchmark, not to tests.)"""
from __future__ import annotations

import types

from jaxdet import benchmark
from tests.engine.tiny import tiny_config


def test_benchmark_reports_every_figure(coco128_root, tmp_path):
    config = tiny_config(coco128_root, str(tmp_path))
    args = types.SimpleNamespace(compare=None, only="jaxdet", num_images=2, warmup=1, train_iters=1, train_batch=2,
                                 config_path="tiny")
    res = benchmark.run(config, args)
    j = res["jaxdet"]
    assert res["num_images"] == 2 and res["images"].endswith("instances_val2017.json")
    for key in ("inference_s_per_image", "train_s_per_iter", "loader_images_per_s", "peak_rss_mb"):
        assert j[key] > 0, key
    assert j["xla_gflops"]["inference"] > 0 and j["xla_gflops"]["train"] > j["xla_gflops"]["inference"]
    assert "train" in j["compile_s"] and any(k.startswith("inference_") for k in j["compile_s"])
    assert j["compilations"] >= 2  # at least the inference and the train programs
