#!/usr/bin/env bash
# Short CPU training runs of the detector families on the real coco128 images (300 iterations from scratch).
#
#   bash scripts/train_families_coco128.sh retinanet [more --config.x=y overrides]
#   FAMILY: faster_rcnn | mask_rcnn | retinanet | fcos   (configs/<FAMILY>.py)
#
# Each family's heads and losses as in its config, on a CPU-sized backbone: ResNet-18 at half width with GroupNorm
# and nothing frozen (no ImageNet weights can be downloaded here, and an untrained FrozenBN is an identity), a
# 128-channel FPN, batch 2, shortest edge 320 / longest 512 with two canvases, lr 0.01 with a 50-iteration warmup
# and a x0.1 step at 240, checkpoints every 100, evaluation on coco128's val split at the end.
# Output: output/coco128_<FAMILY>/ (log.txt, metrics.jsonl, eval/...). For the full R50-FPN drop the four
# model.backbone/model.fpn overrides (about 5x slower per iteration on 2 CPU cores).
# COCO128 defaults to ../shared/data/coco128 (set COCO128=/path/to/coco128 otherwise).
set -euo pipefail
family=${1:?usage: train_families_coco128.sh FAMILY [overrides...]}
shift
root=${COCO128:-../shared/data/coco128}
exec python -m jaxdet.train --config "configs/${family}.py" --config.data.root="${root}" \
  --config.output_dir="output/coco128_${family}" --config.solver.ims_per_batch=2 --config.solver.max_iter=300 \
  --config.solver.base_lr=0.01 --config.solver.warmup_iters=50 "--config.solver.steps=(240,)" \
  "--config.input.min_size_train=(320,)" --config.input.max_size_train=512 \
  --config.input.min_size_test=320 --config.input.max_size_test=512 \
  "--config.input.canvases=((320,512),(512,320))" --config.solver.checkpoint_period=100 \
  --config.test.ims_per_batch=2 --config.model.backbone.norm=gn --config.model.backbone.freeze_at=0 \
  --config.model.backbone.depth=18 --config.model.backbone.width_multiplier=0.5 --config.model.fpn.out_channels=128 \
  --config.log_period=10 --config.data.num_workers=0 "$@"
