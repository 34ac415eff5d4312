"""Checkpoints: last K kept, a step being written is never the latest, a damaged newest step falls back to
the previous one (warning naming both), a wrong config is listed (never a fallback), the best AP is kept,
and bad weight files give clear errors. A small train state (dense layer + SGD momentum) keeps it fast."""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxdet.engine import checkpoint as C
from jaxdet.engine.state import TrainState, create_train_state


def _state(kernel_shape=(64, 32), extra=False) -> TrainState:
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=kernel_shape).astype(np.float32),
                        "bias": np.zeros(kernel_shape[1], np.float32)}}
    if extra:
        params["head"] = {"kernel": np.ones((3, 3), np.float32)}
    variables = {"params": params, "batch_stats": {"mean": rng.normal(size=(32,)).astype(np.float32)}}
    return create_train_state(variables, optax.sgd(0.1, momentum=0.9), jax.random.key_data(jax.random.key(0)))


def _advance(state: TrainState, i: int) -> TrainState:
    """A state that differs at every step (params, momentum, BN statistics)."""
    def f(tree):
        return jax.tree.map(lambda x: x + np.float32(i) * 0.5, tree)

    return state.replace(step=np.int32(i), params=f(state.params), model_state=f(state.model_state),
                         opt_state=f(state.opt_state))


def _leaves(state: TrainState) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(state)]


@pytest.fixture
def saved(tmp_path):
    """Steps 1..5 saved with max_to_keep=3 -> steps 3, 4, 5 kept; returns (directory, {step: state})."""
    base, states = _state(), {}
    ck = C.Checkpointer(tmp_path / "ckpt", max_to_keep=3)
    for i in range(1, 6):
        states[i] = _advance(base, i)
        ck.save(states[i], {"format": "jaxdet", "step": i})
    ck.close()
    return tmp_path / "ckpt", states


def _largest_data_file(item_dir) -> str:
    files = [f for f in glob.glob(os.path.join(item_dir, "**", "d", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _truncate_array_data(step_dir):
    f = _largest_data_file(os.path.join(step_dir, "variables"))
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _flip_array_bytes(step_dir):
    f = _largest_data_file(os.path.join(step_dir, "variables"))
    with open(f, "r+b") as fh:
        fh.seek(os.path.getsize(f) // 2)
        data = fh.read(16)
        fh.seek(os.path.getsize(f) // 2)
        fh.write(bytes(b ^ 0xFF for b in data))


def _alter_recorded_checksum(step_dir):
    path = os.path.join(step_dir, "checksums", "metadata")
    with open(path) as f:
        sums = json.load(f)
    sums["train"]["opt_state/0/trace/dense/kernel"] = "<f4[64, 32]:00000000"
    with open(path, "w") as f:
        json.dump(sums, f)


def _truncate_meta(step_dir):
    with open(os.path.join(step_dir, "meta", "metadata"), "r+b") as f:
        f.truncate(5)


DAMAGE = {
    "truncated array file": _truncate_array_data,
    "flipped array bytes": _flip_array_bytes,
    "checksum mismatch": _alter_recorded_checksum,
    "array metadata removed": lambda d: os.remove(os.path.join(d, "variables", "_METADATA")),
    "train item removed": lambda d: shutil.rmtree(os.path.join(d, "train")),
    "truncated meta json": _truncate_meta,
    "emptied step folder": lambda d: [shutil.rmtree(d), os.makedirs(d)],
}


def test_roundtrip_and_last_k_kept(saved):
    directory, states = saved
    assert sorted(os.listdir(directory)) == ["3", "4", "5"]
    ck = C.Checkpointer(directory, max_to_keep=3)
    restored, meta = ck.restore(C.abstract(_state()))
    assert _leaves(restored) == _leaves(states[5]) and meta == {"format": "jaxdet", "step": 5}
    restored, _ = ck.restore(C.abstract(_state()), step=4)
    assert _leaves(restored) == _leaves(states[4])
    with pytest.raises(FileNotFoundError, match="no step 1 in"):
        ck.restore(C.abstract(_state()), step=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        C.Checkpointer(directory.parent / "empty").restore(C.abstract(_state()))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_step_falls_back_with_a_warning_naming_both(saved, damage, caplog):
    directory, states = saved
    DAMAGE[damage](str(directory / "5"))
    ck = C.Checkpointer(directory, max_to_keep=3)
    with caplog.at_level(logging.WARNING, logger="jaxdet.engine.checkpoint"):
        restored, meta = ck.restore(C.abstract(_state()))
    assert _leaves(restored) == _leaves(states[4]) and meta["step"] == 4
    text = "\n".join(caplog.messages)
    assert f"{directory / '5'} is damaged" in text
    assert f"{directory / '5'} damaged: resuming from {directory / '4'} instead" in text
    if damage == "checksum mismatch":
        assert "opt_state/0/trace/dense/kernel" in text
    # the damaged folder is kept aside, and the run can write that step again
    assert sorted(os.listdir(directory)) == ["3", "4", "5.damaged"]
    ck.save(states[5], {"format": "jaxdet", "step": 5})
    ck.wait()
    assert ck.latest_step() == 5 and _leaves(ck.restore(C.abstract(_state()))[0]) == _leaves(states[5])


def test_every_step_damaged_is_an_error(saved):
    directory, _ = saved
    for s in ("3", "4", "5"):
        _truncate_array_data(str(directory / s))
    with pytest.raises(C.CheckpointDamagedError, match=rf"every checkpoint in {directory} is damaged.*--no-resume"):
        C.Checkpointer(directory).restore(C.abstract(_state()))


def test_a_step_being_written_is_never_the_latest(saved):
    directory, states = saved
    # what a write interrupted before orbax's final rename leaves behind (here even with complete contents)
    shutil.copytree(directory / "5", directory / "6.orbax-checkpoint-tmp-1795340000")
    ck = C.Checkpointer(directory, max_to_keep=3)  # opening for writing removes the leftover
    assert ck.latest_step() == 5 and ck.all_steps() == [3, 4, 5]
    assert _leaves(ck.restore(C.abstract(_state()))[0]) == _leaves(states[5])
    assert not (directory / "6.orbax-checkpoint-tmp-1795340000").exists()


def test_wrong_config_is_listed_and_never_falls_back(saved):
    directory, _ = saved
    other = _state(kernel_shape=(64, 16), extra=True)
    with pytest.raises(ValueError) as e:
        C.Checkpointer(directory).restore(C.abstract(other))
    msg = str(e.value)
    assert not isinstance(e.value, C.CheckpointDamagedError)
    assert f"checkpoint {directory / '5'} does not fit this config" in msg
    assert "params/dense/kernel: checkpoint (64, 32) vs model (64, 16)" in msg
    assert "params/dense/bias: checkpoint (32,) vs model (16,)" in msg
    assert "missing keys: params/head/kernel" in msg
    assert "opt_state/0/trace/head/kernel" in msg  # the optimizer state is checked too
    assert sorted(os.listdir(directory)) == ["3", "4", "5"]  # nothing set aside


def test_best_checkpointer_keeps_the_best_ap(tmp_path, caplog):
    base = _state()
    best = C.BestCheckpointer(tmp_path / "best")
    results = [best.update(_advance(base, i), {"step": i}, {"AP": ap})
               for i, ap in enumerate([10.0, 5.0, 20.0, 15.0, float("nan")], start=1)]
    best.wait()
    assert results == [True, False, True, False, False]
    assert best.best() == (3, 20.0) and os.listdir(tmp_path / "best") == ["3"]
    best.close()
    again = C.BestCheckpointer(tmp_path / "best")  # a resumed run continues the comparison
    assert again.best() == (3, 20.0)
    assert not again.update(_advance(base, 6), {"step": 6}, {"AP": 19.0})
    assert again.update(_advance(base, 7), {"step": 7}, {"AP": 25.0})
    again.close()
    assert os.listdir(tmp_path / "best") == ["7"]
    variables, meta = C.load_variables(str(tmp_path / "best"))  # what `jaxdet.evaluate --checkpoint` reads
    assert meta == {"step": 7}
    np.testing.assert_array_equal(variables["params"]["dense"]["kernel"],
                                  _advance(base, 7).params["dense"]["kernel"])
    with pytest.raises(ValueError, match="mode"):
        C.BestCheckpointer(tmp_path / "b2", mode="best")


def test_load_variables_bad_weights_name_the_path(tmp_path, saved):
    directory, states = saved
    pth = tmp_path / "model_final.pth"
    pth.write_bytes(b"PK\x03\x04 not a jaxdet checkpoint")
    with pytest.raises(ValueError, match=rf"{pth} is a file, not a jaxdet checkpoint folder.*checkpoints_convert"):
        C.load_variables(str(pth))
    with pytest.raises(FileNotFoundError, match="nothere"):
        C.load_variables(str(tmp_path / "nothere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no jaxdet checkpoint found in .*empty"):
        C.load_variables(str(tmp_path / "empty"))
    # an orbax checkpoint of another layout (no 'variables' item)
    with ocp.CheckpointManager(tmp_path / "other", item_handlers={"model": ocp.StandardCheckpointHandler()}) as m:
        m.save(1, args=ocp.args.Composite(model=ocp.args.StandardSave({"w": np.ones(3)})))
        m.wait_until_finished()
    with pytest.raises(ValueError, match=r"other/1 is not a jaxdet checkpoint: it holds the item\(s\) \['model'\]"):
        C.load_variables(str(tmp_path / "other"))
    # damaged: truncated data, or altered bytes caught by the checksums
    np.testing.assert_array_equal(C.load_variables(str(directory / "5"))[0]["params"]["dense"]["kernel"],
                                  states[5].params["dense"]["kernel"])
    _truncate_array_data(str(directory / "5"))
    with pytest.raises(ValueError, match=rf"checkpoint {directory / '5'} cannot be read"):
        C.load_variables(str(directory / "5"))
    _flip_array_bytes(str(directory / "4"))
    with pytest.raises(ValueError, match=rf"{directory / '4'}"):
        C.load_variables(str(directory / "4"))


def test_merge_variables_lists_missing_unexpected_and_misshaped():
    target = {"params": {"a": {"kernel": np.zeros((3, 4))}, "b": {"bias": np.zeros(4)}, "c": {"w": np.zeros(2)}}}
    loaded = {"params": {"a": {"kernel": np.ones((3, 5))}, "b": {"bias": np.ones(4)}, "z": {"w": np.ones(1)}}}
    with pytest.raises(ValueError) as e:
        C.merge_variables(target, loaded, "w.ckpt", allow_missing=False)
    msg = str(e.value)
    assert msg.startswith("weights w.ckpt do not fit this config")
    assert "1 unexpected keys (not in this model): params/z/w" in msg
    assert "1 mis-shaped: params/a/kernel: checkpoint (3, 5) vs model (3, 4)" in msg
    assert "1 missing keys: params/c/w" in msg
    # partial weights (e.g. a backbone): missing keys keep their values, the rest is loaded
    merged = C.merge_variables(target, {"params": {"b": {"bias": np.ones(4)}}}, "w.ckpt", allow_missing=True)
    np.testing.assert_array_equal(merged["params"]["b"]["bias"], np.ones(4))
    np.testing.assert_array_equal(merged["params"]["c"]["w"], np.zeros(2))
