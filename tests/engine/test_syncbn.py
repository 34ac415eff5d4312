"""BatchNorm under data parallelism on 8 (fake CPU) devices: 'syncbn' = one BN over the global batch,
'bn' = one BN per device's shard (torch DDP ``BatchNorm2d``), both against flax's own ``nn.BatchNorm``
run on a single device (forward outputs, running-statistics updates, gradients)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.engine.tiny import REPO

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from jax.sharding import PartitionSpec as P
    from jaxdet.engine import parallel
    from jaxdet.modeling.layers import get_norm, data_parallel_size, DATA_AXIS
    from jaxdet.modeling.backbones.resnet import ResNet

    assert jax.device_count() == 8, jax.devices()
    assert DATA_AXIS == parallel.DATA_AXIS
    B, G = 16, 8

    class Net(nn.Module):
        '''conv-norm-relu twice, pooled, a linear head; ``norm``: a kind for get_norm, or "flax" for
        flax.linen.BatchNorm (the reference: plain BN over whatever batch it is given).'''
        norm: str
        batch_groups: int | None = None
        axis_name: str | None = None

        def make_norm(self, name):
            if self.norm == "flax":
                return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, name=name)
            return get_norm(self.norm, train=True, batch_groups=self.batch_groups, axis_name=self.axis_name,
                            name=name)

        @nn.compact
        def __call__(self, x):
            x = nn.relu(self.make_norm("bn1")(nn.Conv(8, (3, 3), name="conv1")(x)))
            x = nn.relu(self.make_norm("bn2")(nn.Conv(8, (3, 3), strides=2, name="conv2")(x)))
            return nn.Dense(3, name="fc")(x.mean((1, 2)))

    rng = np.random.default_rng(0)
    # each device's 2 images get their own offset and scale, so per-device and global statistics differ
    x = rng.normal(size=(B, 12, 12, 3)).astype(np.float32)
    x = x * np.repeat(rng.uniform(0.5, 3.0, G), B // G)[:, None, None, None]
    x = x + np.repeat(rng.normal(0, 2.0, G), B // G)[:, None, None, None]
    x = x.astype(np.float32)
    target = rng.normal(size=(B, 3)).astype(np.float32)
    variables = Net("flax").init(jax.random.key(1), x[:2])
    # non-trivial BN affine and running statistics, so their use and update are visible
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: v + rng.uniform(0.2, 0.8, v.shape).astype(np.float32)
        if p[-1].key in ("scale", "bias", "mean", "var") else v, variables)
    params, stats = variables["params"], variables["batch_stats"]

    def step(model):
        '''loss, gradient, running-stat updates and outputs of one train-mode forward/backward.'''
        def loss_fn(p, x, t):
            out, upd = model.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
            return jnp.mean(jnp.square(out - t)), (out, upd["batch_stats"])
        def f(p, x, t):
            (loss, (out, upd)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, t)
            return loss, out, upd, g
        return f

    def on_mesh(model, n):
        mesh = parallel.make_mesh(jax.devices()[:n])
        repl, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
        f = jax.jit(step(model), in_shardings=(repl, data, data), out_shardings=(repl, data, repl, repl))
        xs, ts = parallel.shard_batch({"x": x, "t": target}, mesh).values()
        assert len(xs.sharding.device_set) == n
        return jax.device_get(f(jax.device_put(params, repl), xs, ts))

    def maxdiff(a, b):
        return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                   for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def compare(name, got, ref, tol):
        names = ("loss", "outputs", "batch_stats", "grads")
        diffs = [maxdiff(g, r) for g, r in zip(got, ref)]
        print(name, "  ".join(f"{n} {d:.2g}" for n, d in zip(names, diffs)))
        assert all(d < tol for d in diffs), (name, diffs)
        return diffs

    # the reference: flax BatchNorm over the whole global batch, one device, no mesh
    ref_global = jax.device_get(jax.jit(step(Net("flax")))(params, x, target))
    # the reference per device: flax BatchNorm on each group of B/g images separately; the global loss is
    # the mean over equal groups of the group losses; running stats: the mean of the groups' updated ones
    def ref_groups(g):
        def f(p):
            xs, ts = x.reshape(g, B // g, *x.shape[1:]), target.reshape(g, B // g, 3)
            loss, out, upd, grads = jax.vmap(step(Net("flax")), in_axes=(None, 0, 0))(p, xs, ts)
            return (loss.mean(), out.reshape(B, 3), jax.tree.map(lambda v: v.mean(0), upd),
                    jax.tree.map(lambda v: v.mean(0), grads))
        return jax.device_get(jax.jit(f)(params))
    ref_device = ref_groups(G)
    assert maxdiff(ref_device[1], ref_global[1]) > 1e-2, "per-device and global BN must differ on this batch"
    compare("flax BN 1 group (vmap) vs flax BN global batch:", ref_groups(1), ref_global, 1e-5)

    TOL = 2e-5
    compare("syncbn 8 devices vs flax BN global batch:", on_mesh(Net("syncbn"), 8), ref_global, TOL)
    compare("syncbn 1 device  vs flax BN global batch:", on_mesh(Net("syncbn"), 1), ref_global, TOL)
    compare("bn     8 devices vs flax BN per device:  ", on_mesh(Net("bn"), 8), ref_device, TOL)
    compare("bn     2 devices vs flax BN per device:  ", on_mesh(Net("bn"), 2), ref_groups(2), TOL)
    compare("bn     1 device  vs flax BN global batch:", on_mesh(Net("bn"), 1), ref_global, TOL)
    compare("bn batch_groups=8, 1 device vs per 2 images:", on_mesh(Net("bn", batch_groups=8), 1), ref_device, TOL)

    # G as the layer sees it: inside parallel.trace_context (the train step's way), from the mesh of the
    # jit's committed inputs, 1 without a mesh and inside shard_map over "data"
    seen = {}
    mesh = parallel.make_mesh()
    probe = lambda key: (lambda v: seen.setdefault(key, data_parallel_size(v * 2)) and v)
    def traced_in_context(v):
        with parallel.trace_context(mesh):
            return probe("trace_context")(v)
    jax.jit(traced_in_context)(np.zeros((8, 2), np.float32))
    jax.jit(probe("jit"), in_shardings=parallel.data_sharding(mesh))(
        jax.device_put(np.zeros((8, 2), np.float32), parallel.data_sharding(mesh)))
    seen["eager"] = data_parallel_size(jnp.zeros((8, 2)))
    jax.jit(jax.shard_map(probe("shard_map"), mesh=mesh, in_specs=P("data"), out_specs=P("data")))(
        jnp.zeros((8, 2)))
    print("data_parallel_size:", seen)
    assert seen == {"trace_context": 8, "jit": 8, "eager": 1, "shard_map": 1}, seen

    # syncbn run per device under shard_map with axis_name: the same forward as under jit
    f = jax.jit(jax.shard_map(lambda p, xs: Net("syncbn", axis_name="data").apply(
        {"params": p, "batch_stats": stats}, xs, mutable=["batch_stats"]),
        mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())))
    out, upd = jax.device_get(f(params, x))
    d = max(maxdiff(out, ref_global[1]), maxdiff(upd["batch_stats"], ref_global[2]))
    print(f"syncbn under shard_map(axis_name='data') vs flax BN global batch: {d:.2g}")
    assert d < TOL

    # the real backbone: a norm='syncbn' ResNet gives the same train-mode outputs on 8 devices and on 1
    resnet = ResNet(depth=18, width_multiplier=0.125, norm="syncbn", freeze_at=0)
    xr = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    rv = jax.jit(lambda k: resnet.init(k, xr[:1]))(jax.random.key(0))
    outs = {}
    for n in (1, 8):
        m = parallel.make_mesh(jax.devices()[:n])
        fr = jax.jit(lambda v, x: resnet.apply(v, x, train=True, mutable=["batch_stats"]),
                     in_shardings=(parallel.replicated(m), parallel.data_sharding(m)))
        outs[n] = jax.device_get(fr(rv, jax.device_put(xr, parallel.data_sharding(m))))
    d = maxdiff(outs[8], outs[1])
    print(f"ResNet-18 syncbn 8 devices vs 1: {d:.2g}")
    assert d < 1e-4
    print("OK")
""")


def test_syncbn_and_per_device_bn_on_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=REPO,
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
