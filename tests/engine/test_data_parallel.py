"""One step on 8 (fake CPU) devices equals one step on 1 device with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.engine.tiny import REPO

SCRIPT = textwrap.dedent("""
    import itertools, sys
    import jax, numpy as np
    from jaxdet.data.pipeline import make_train_iterator
    from jaxdet.engine import parallel
    from jaxdet.engine.optim import build_optimizer
    from jaxdet.engine.state import create_train_state
    from jaxdet.engine.steps import make_train_step
    from jaxdet.modeling.build import build_detector, trainable_mask
    from jaxdet.engine.bootstrap import init_variables, load_datasets
    from tests.engine.tiny import tiny_config

    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(sys.argv[1], sys.argv[2], **{"solver.ims_per_batch": 8, "solver.warmup_iters": 0,
                                                     "solver.base_lr": 0.01})
    train_ds, _ = load_datasets(config, train=True)
    model = build_detector(config.model, train_ds.num_classes)
    variables = init_variables(model, config, 0)
    tx, schedule = build_optimizer(config.solver, variables["params"], trainable_mask(variables["params"], 0))
    _, batch = next(make_train_iterator(train_ds, batch_size=8, canvases=config.input.canvases,
                                        min_size_train=config.input.min_size_train,
                                        max_size_train=config.input.max_size_train,
                                        max_instances=config.data.max_instances, seed=0))
    results = {}
    for n in (1, 2, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        state = parallel.replicate(create_train_state(variables, tx, jax.random.key_data(jax.random.key(0))), mesh)
        step = make_train_step(model, tx, schedule, mesh)
        sharded = parallel.shard_batch(batch, mesh)
        assert len(sharded["image"].sharding.device_set) == n
        assert sharded["image"].addressable_shards[0].data.shape[0] == 8 // n  # per-device batch
        state, metrics = step(state, sharded)
        state, metrics = step(state, sharded)
        results[n] = (jax.device_get(state.params), float(metrics["loss_total"]))
    ref, ref_loss = results[1]
    for n in (2, 8):
        params, loss = results[n]
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, ref))
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params,
                                             variables["params"]))
        print(f"devices={n} max|param diff|={max(diffs):.3g} loss {loss:.6f} vs {ref_loss:.6f} "
              f"max update {max(moved):.3g}")
        assert max(moved) > 1e-4, "the step must move the parameters"
        assert max(diffs) < 1e-5, max(diffs)
        assert abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    print("OK")
""")


def test_eight_devices_match_one(coco128_root, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=REPO,
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(coco128_root), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
