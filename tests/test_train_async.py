"""The loops never wait on the device per step: metrics are read in windows, batches are
copied ahead, passes fetch their outputs once; the NaN guarantee holds across a window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_model import registered, tiny_config
from train import checkpoint as C
from train import data as D
from train import device, loop
from train import step as T
from train.pipeline import Loader


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def _count_metric_reads(monkeypatch) -> list:
    """Every ``jax.device_get`` of training-step metrics (a list of dicts with a loss)."""
    reads, real = [], jax.device_get

    def counting(x):
        if isinstance(x, list) and x and isinstance(x[0], dict) and "loss" in x[0]:
            reads.append(len(x))
        return real(x)

    monkeypatch.setattr(jax, "device_get", counting)
    return reads


def test_metrics_are_read_in_windows_not_per_step(tiny, tmp_path, monkeypatch):
    reads = _count_metric_reads(monkeypatch)
    config = tiny_config(log_every_steps=4, checkpoint_every_steps=100)
    loop.train_and_evaluate(config, str(tmp_path))
    per_epoch = 9  # 76 training images, batch 8
    # Reads at steps 4, 8, 12, 16 and at each epoch's end; every step read exactly once.
    assert sum(reads) == 2 * per_epoch
    assert reads == [4, 4, 1, 3, 4, 2]
    rows = (tmp_path / "history.jsonl").read_text().splitlines()
    assert sum('"train_step"' in r for r in rows) == 4  # logged steps 4, 8, 12, 16


def test_a_non_finite_step_inside_a_window_is_named_and_never_saved(tiny, tmp_path):
    # Step 1's learning rate is 0 (warm-up), step 2's is 2.5e29: step 2 is the first
    # non-finite one, found when the window of steps 1-3 is read at the step-3 checkpoint.
    config = tiny_config(learning_rate=1e30, optimizer="sgd", schedule="constant",
                         warmup_steps=4, checkpoint_every_steps=3, log_every_steps=100,
                         weight_decay=0.0)
    with pytest.raises(loop.NonFiniteLossError) as err:
        loop.train_and_evaluate(config, str(tmp_path))
    assert "non-finite training step 2 " in str(err.value)
    assert C.Checkpoints.steps(str(tmp_path / "checkpoints" / "last")) == []


def test_predict_fetches_once_and_drops_padding():
    source = D.synthetic_source(21, seed=3)
    mesh = T.make_mesh()
    loader = Loader(source, np.arange(21)[::-1], batch_size=8, image_size=8, workers=1)
    fn = jax.jit(lambda s, b: jnp.mean(b["image"].astype(jnp.float32), axis=(1, 2, 3)) + s)
    seen = []
    out, kept = device.predict(fn, 1.0, loader.epoch(0), mesh, keep=("label",), size=1,
                               on_batch=lambda b: seen.append(int(b["mask"].sum())))
    want = np.stack([loader.example(int(i), 0) for i in np.arange(21)[::-1]])
    np.testing.assert_allclose(out, want.astype(np.float32).mean(axis=(1, 2, 3)) + 1.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(kept["label"], source.labels[np.arange(21)[::-1]])
    assert seen == [8, 8, 5]


def test_prefetch_yields_every_batch_in_order_already_on_the_devices():
    mesh = T.make_mesh()
    batches = [{"x": np.full((4,), i, np.float32)} for i in range(5)]
    got = list(device.prefetch(iter(batches), mesh, size=2))
    assert [int(h["x"][0]) for h, _ in got] == list(range(5))
    for host, dev in got:
        assert isinstance(dev["x"], jax.Array) and dev["x"].sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(dev["x"]), host["x"])
