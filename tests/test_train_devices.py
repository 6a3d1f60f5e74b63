"""Data parallelism and precision: 4 forced CPU devices compute what 1 device does; bf16
computes in bfloat16 with float32 parameters and optimizer state."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tiny_model import registered, tiny_config
from train import classification
from train import freeze as F
from train import step as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = """
import jax, numpy as np, zoo
from tests.tiny_model import register, tiny_config
from train import classification, step as T, freeze as F
register()
assert jax.device_count() == 4, jax.devices()
config = tiny_config(**{"head.kind": "mlp", "head.hidden": 8, "head.dropout": 0.3})
spec = zoo.spec(config.model.name)
rng = np.random.default_rng(0)
batches = [{"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
            "label": rng.integers(0, 2, 8).astype(np.int32),
            "mask": np.ones(8, np.float32)} for _ in range(4)]
out = {}
for n in (1, 4):
    model, variables = classification.build(config, 2)
    trainable, _, tx = F.optimizer_for(config, spec, variables["params"], 10)
    mesh = T.make_mesh(n)
    train_fn, eval_fn = T.jit_steps(
        T.make_train_step(model, tx, trainable, spec.normalize),
        T.make_eval_step(model, spec.normalize), mesh)
    state = T.replicate(T.create_state(variables, tx, 0), mesh)
    for batch in batches:
        state, m = train_fn(state, T.shard_batch(batch, mesh))
    assert len(state.params["head"]["dense1"]["kernel"].sharding.device_set) == n
    probs = eval_fn(state, T.shard_batch(batches[0], mesh))
    out[n] = (F.flat_paths(jax.device_get(state.params)),
              F.flat_paths(jax.device_get(state.batch_stats)), np.asarray(probs))
for one, four in zip(out[1], out[4]):
    if isinstance(one, dict):
        for k in one:
            np.testing.assert_allclose(one[k], four[k], rtol=2e-5, atol=2e-6, err_msg=k)
    else:
        np.testing.assert_allclose(one, four, rtol=2e-5, atol=2e-6)
try:
    T.check_batch_size(6, T.make_mesh(4))
except ValueError as e:
    assert "batch_size=4" in str(e), e
    print("OK", e)
"""


@pytest.mark.slow  # a subprocess with 4 forced devices: ~10 s of CPU
def test_four_devices_match_one_device():
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", RUNNER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK batch_size=6 is not divisible by the 4 devices" in proc.stdout


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def test_bfloat16_computes_in_bf16_with_float32_state(tiny):
    config = tiny_config(dtype="bfloat16")
    spec = __import__("zoo").spec(config.model.name)
    model, variables = classification.build(config, 2)
    trainable, _, tx = F.optimizer_for(config, spec, variables["params"], 4)
    x = jnp.zeros((2, 16, 16, 3))
    assert jax.jit(model.apply)(variables, x).dtype == jnp.bfloat16
    mesh = T.make_mesh(1)
    train_fn, _ = T.jit_steps(T.make_train_step(model, tx, trainable, spec.normalize),
                              T.make_eval_step(model, spec.normalize), mesh)
    state = T.replicate(T.create_state(variables, tx, 0), mesh)
    batch = {"image": np.full((8, 16, 16, 3), 100, np.uint8), "label": np.arange(8) % 2,
             "mask": np.ones(8, np.float32)}
    state, m = train_fn(state, T.shard_batch(batch, mesh))
    assert np.isfinite(m["loss"]) and m["loss"].dtype == np.float32
    for leaf in jax.tree.leaves(state.params) + [
            x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]:
        assert leaf.dtype == jnp.float32
