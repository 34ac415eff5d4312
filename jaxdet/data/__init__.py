"""Host-side data: COCO json loading, numpy/Pillow transforms, canvas-grouped batching with grain, and a
synthetic shapes dataset. Never imports jaxdet.modeling; see DESIGN.md §2 for the batch contract.

Modules: `coco` (load_coco, CocoDataset), `transforms` (decode/resize/flip/pad), `pipeline`
(TrainPlan, make_train_iterator, make_eval_iterator), `synthetic` (generate_synthetic_coco).
"""
from jaxdet.data.coco import CocoDataset, load_coco
from jaxdet.data.pipeline import (BatchPlan, TrainPlan, eval_batches, make_eval_iterator, make_train_iterator,
                                  train_batches)


def __getattr__(name):  # lazy, so that `python -m jaxdet.data.synthetic` does not import it twice
    if name == "generate_synthetic_coco":
        from jaxdet.data.synthetic import generate_synthetic_coco
        return generate_synthetic_coco
    raise AttributeError(f"module 'jaxdet.data' has no attribute {name!r}")

__all__ = ["CocoDataset", "load_coco", "BatchPlan", "TrainPlan", "eval_batches", "train_batches",
           "make_eval_iterator", "make_train_iterator", "generate_synthetic_coco"]
