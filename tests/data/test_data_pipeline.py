"""The canvas-grouped plan (deterministic, resumable, detectron2-style grouping) and the grain iterators on coco128."""
import json

import numpy as np
import pytest
from PIL import Image

from jaxdet.data import pipeline as P
from jaxdet.data import transforms as T
from jaxdet.data.coco import load_coco

CANVASES = [(192, 320), (320, 192)]
MIN_SIZES = (128, 160, 192)
MAX_SIZE = 320
M = 50


@pytest.fixture(scope="module")
def train_ds(coco128_root):
    return load_coco(coco128_root / "annotations" / "instances_train2017.json", coco128_root / "train2017",
                     skip_empty=True)


@pytest.fixture(scope="module")
def eval_ds(coco128_root):
    return load_coco(coco128_root / "annotations" / "instances_train2017.json", coco128_root / "train2017",
                     skip_empty=False)


def _plan(ds, seed=0, batch_size=4, **kw):
    return P.TrainPlan(ds, batch_size, CANVASES, MIN_SIZES, MAX_SIZE, seed, **kw)


def _same(a: P.BatchPlan, b: P.BatchPlan):
    assert a.step == b.step and a.canvas == b.canvas
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.flips, b.flips)
    np.testing.assert_array_equal(a.min_sizes, b.min_sizes)


# ---------------------------------------------------------------- the plan

def test_canvas_assignment(train_ds):
    canv = P.image_canvases(train_ds, CANVASES, MIN_SIZES, MAX_SIZE)
    for r, c in zip(train_ds.records, canv):
        h, w = r["height"], r["width"]
        nh, nw = T.resized_size(h, w, max(MIN_SIZES), MAX_SIZE)
        assert nh <= CANVASES[c][0] and nw <= CANVASES[c][1]
        if nh <= 192 and nw <= 192:
            assert c == 0  # fits both, equal area: the first wins
        else:
            assert c == (0 if w > h else 1)


def test_plan_is_a_pure_function_of_seed_and_step(train_ds):
    a = _plan(train_ds)
    bpe = a.batches_per_epoch
    counts = np.bincount(a.canvas_of, minlength=2)
    assert bpe == int(np.sum(counts // 4)) and bpe > 20
    seq = [a[k] for k in range(2 * bpe + 5)]
    # a fresh plan asked in another order (jumping straight into epoch 2) gives the same batches
    b = _plan(train_ds)
    for k in [2 * bpe + 3, bpe + 1, 7, 0, 2 * bpe + 4]:
        _same(b[k], seq[k])
    # train_batches from step k equals the tail of the sequence from 0
    resumed = list(P.train_batches(train_ds, 4, CANVASES, MIN_SIZES, MAX_SIZE, seed=0, step_start=bpe - 2,
                                   num_steps=5))
    for got, want in zip(resumed, seq[bpe - 2:bpe + 3]):
        _same(got, want)
    assert [p.step for p in resumed] == list(range(bpe - 2, bpe + 3))
    # another seed is another schedule
    other = _plan(train_ds, seed=1)
    assert any(not np.array_equal(other[k].indices, seq[k].indices) for k in range(5))


def test_plan_epoch_is_aspect_ratio_grouping_of_a_shuffle(train_ds):
    B = 4
    plan = _plan(train_ds, seed=3, batch_size=B)
    bpe = plan.batches_per_epoch
    for epoch in (0, 1):
        batches = [plan[epoch * bpe + k] for k in range(bpe)]
        # reference: stream the epoch's permutation into per-canvas buckets, emit a bucket when full
        perm = plan._epoch(epoch)[0]
        buckets = {0: [], 1: []}
        want = []
        for i in perm:
            c = int(plan.canvas_of[i])
            buckets[c].append(i)
            if len(buckets[c]) == B:
                want.append((c, buckets[c]))
                buckets[c] = []
        assert len(want) == bpe
        for got, (c, idx) in zip(batches, want):
            assert got.canvas == c
            np.testing.assert_array_equal(got.indices, idx)
            assert np.all(plan.canvas_of[got.indices] == got.canvas)
        used = np.concatenate([b.indices for b in batches])
        assert len(set(used.tolist())) == used.size == bpe * B  # no image twice in an epoch
        flips = np.concatenate([b.flips for b in batches])
        sizes = np.concatenate([b.min_sizes for b in batches])
        assert 0.35 < flips.mean() < 0.65
        assert set(sizes.tolist()) == set(MIN_SIZES)
    assert not np.array_equal(plan._epoch(0)[0], plan._epoch(1)[0])
    assert not _plan(train_ds, flip_prob=0.0)[5].flips.any()
    assert _plan(train_ds, flip_prob=1.0)[5].flips.all()


def test_plan_errors(train_ds):
    with pytest.raises(ValueError, match=r"\.jpg \(\d+x\d+\).*fits in none of the canvases"):
        P.TrainPlan(train_ds, 2, [(192, 192)], 192, 320, 0)
    with pytest.raises(ValueError, match="no canvas holds 200 images"):
        _plan(train_ds, batch_size=200)
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        P.make_train_iterator(train_ds, batch_size=4, canvases=CANVASES, min_size_train=MIN_SIZES,
                              max_size_train=MAX_SIZE, process_count=3)


# ---------------------------------------------------------------- the train iterator

def _train_iter(ds, **kw):
    args = dict(batch_size=4, canvases=CANVASES, min_size_train=MIN_SIZES, max_size_train=MAX_SIZE,
                max_instances=M, seed=0)
    args.update(kw)
    return P.make_train_iterator(ds, **args)


def test_train_batches_follow_the_contract(train_ds):
    plan = _plan(train_ds)
    got = list(_train_iter(train_ds, num_steps=3))
    assert [s for s, _ in got] == [0, 1, 2]
    want_dtypes = dict(image=np.uint8, image_size=np.int32, scale=np.float32, orig_size=np.int32,
                       image_id=np.int64, image_valid=np.bool_, gt_boxes=np.float32, gt_classes=np.int32,
                       gt_valid=np.bool_, gt_is_crowd=np.bool_)
    n_flipped = 0
    for step, batch in got:
        bp = plan[step]
        H, W = CANVASES[bp.canvas]
        assert set(batch) == set(P.BATCH_KEYS) == set(want_dtypes)
        for k, dt in want_dtypes.items():
            assert batch[k].dtype == dt, k
        assert batch["image"].shape == (4, H, W, 3) and batch["gt_boxes"].shape == (4, M, 4)
        assert batch["image_valid"].all()
        for row in range(4):
            rec = train_ds.records[bp.indices[row]]
            h, w = rec["height"], rec["width"]
            nh, nw = T.resized_size(h, w, int(bp.min_sizes[row]), MAX_SIZE)
            assert batch["image_id"][row] == rec["image_id"]
            np.testing.assert_array_equal(batch["image_size"][row], [nh, nw])
            np.testing.assert_array_equal(batch["orig_size"][row], [h, w])
            assert batch["scale"][row] == np.float32(nh / h)
            img = batch["image"][row]
            assert not img[nh:].any() and not img[:, nw:].any()  # zero padding bottom/right
            ref = T.resize_image(T.decode_image(rec["file_name"]), nh, nw)
            boxes = T.resize_boxes(rec["boxes"], (h, w), (nh, nw))
            if bp.flips[row]:
                n_flipped += 1
                ref = ref[:, ::-1]
                boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
            np.testing.assert_array_equal(img[:nh, :nw], ref)
            n = min(len(rec["classes"]), M)
            np.testing.assert_array_equal(batch["gt_valid"][row], np.arange(M) < n)
            if len(rec["classes"]) <= M:
                np.testing.assert_allclose(batch["gt_boxes"][row, :n], boxes, rtol=0, atol=1e-4)
                np.testing.assert_array_equal(batch["gt_classes"][row, :n], rec["classes"])
                np.testing.assert_array_equal(batch["gt_is_crowd"][row, :n], rec["is_crowd"])
            vb = batch["gt_boxes"][row][batch["gt_valid"][row]]
            assert np.all(vb[:, 0] >= 0) and np.all(vb[:, 2] <= nw + 1e-3) and np.all(vb[:, 3] <= nh + 1e-3)
    assert 0 < n_flipped < 12


def test_train_iterator_resumes_and_slices_by_process(train_ds):
    full = dict(_train_iter(train_ds, num_steps=4))
    resumed = dict(_train_iter(train_ds, start_step=2, num_steps=2))
    assert sorted(resumed) == [2, 3]
    halves = [dict(_train_iter(train_ds, start_step=2, num_steps=2, process_index=p, process_count=2))
              for p in range(2)]
    for s in (2, 3):
        for k in P.BATCH_KEYS:
            np.testing.assert_array_equal(resumed[s][k], full[s][k])
            assert halves[0][s][k].shape[0] == 2
            np.testing.assert_array_equal(np.concatenate([halves[0][s][k], halves[1][s][k]]), full[s][k])


def test_worker_processes_give_the_same_batches(train_ds):
    inproc = list(_train_iter(train_ds, start_step=5, num_steps=2))
    workers = list(_train_iter(train_ds, start_step=5, num_steps=2, num_workers=1))
    assert [s for s, _ in workers] == [5, 6]
    for (_, a), (_, b) in zip(inproc, workers):
        for k in P.BATCH_KEYS:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


# ---------------------------------------------------------------- the eval iterator

def test_eval_iterator_covers_every_image_once(eval_ds):
    B = 3
    canv = [(96, 160), (160, 96)]
    plans = P.eval_batches(eval_ds, B, canv, 96, 160)
    seen = []
    n_batches = 0
    for (num, batch), bp in zip(P.make_eval_iterator(eval_ds, batch_size=B, canvases=canv, min_size_test=96,
                                                     max_size_test=160, max_instances=M), plans):
        n_batches += 1
        assert num == bp.step
        H, W = canv[bp.canvas]
        assert batch["image"].shape == (B, H, W, 3)
        valid = batch["image_valid"]
        np.testing.assert_array_equal(valid, bp.indices >= 0)
        seen += batch["image_id"][valid].tolist()
        assert np.all(batch["image_id"][~valid] == -1)
        assert not batch["image"][~valid].any() and not batch["gt_valid"][~valid].any()
        for row in np.flatnonzero(valid):
            rec = eval_ds.records[bp.indices[row]]
            h, w = rec["height"], rec["width"]
            nh, nw = T.resized_size(h, w, 96, 160)
            np.testing.assert_array_equal(batch["image_size"][row], [nh, nw])
            n = min(len(rec["classes"]), M)
            if len(rec["classes"]) <= M:  # never flipped
                np.testing.assert_allclose(batch["gt_boxes"][row, :n], T.resize_boxes(rec["boxes"], (h, w), (nh, nw)))
    assert n_batches == len(plans)
    all_ids = [r["image_id"] for r in eval_ds.records]
    assert sorted(seen) == sorted(all_ids) and len(seen) == len(set(seen)) == 128
    counts = np.bincount(P.image_canvases(eval_ds, canv, 96, 160), minlength=2)
    assert len(plans) == sum(-(-int(c) // B) for c in counts)
    # within a canvas, dataset order
    for c in range(2):
        order = np.concatenate([p.indices for p in plans if p.canvas == c])
        order = order[order >= 0]
        assert np.all(np.diff(order) > 0)


# ---------------------------------------------------------------- bad files found while loading

def _tiny_dataset(tmp_path, sizes):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    images, anns = [], []
    for i, (h, w) in enumerate(sizes, start=1):
        Image.new("RGB", (w, h), (100, 50, 20)).save(img_dir / f"{i}.jpg")
        images.append(dict(id=i, file_name=f"{i}.jpg", height=h, width=w))
        anns.append(dict(id=100 + i, image_id=i, category_id=1, bbox=[1, 1, 10, 10], iscrowd=0, area=100))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=[dict(id=1, name="x")])))
    return path, img_dir


def test_corrupt_image_found_while_iterating_names_the_file(tmp_path):
    path, img_dir = _tiny_dataset(tmp_path, [(40, 60)] * 4)
    (img_dir / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_coco(path, img_dir, skip_empty=False)
    with pytest.raises(ValueError, match=r"3\.jpg"):
        for _ in P.make_eval_iterator(ds, batch_size=2, canvases=[(64, 64)], min_size_test=40, max_size_test=60,
                                      max_instances=4):
            pass


def test_decoded_size_must_match_the_json(tmp_path):
    path, img_dir = _tiny_dataset(tmp_path, [(40, 60)])
    Image.new("RGB", (40, 60)).save(img_dir / "1.jpg")  # stored portrait, declared landscape
    rec = load_coco(path, img_dir, skip_empty=False).records[0]
    with pytest.raises(ValueError, match=r"1\.jpg: decoded size 60x40 differs from the annotation's 40x60"):
        P.load_example(rec, canvas_hw=(64, 64), min_size=40, max_size=60, flip=False, max_instances=4)
