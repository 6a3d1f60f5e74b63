"""PreciseBN: batch-norm statistics recomputed from training batches (train/precise_bn.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from tests.tiny_model import registered, tiny_config
from train import checkpoint as C
from train import loop
from train import precise_bn as PB
from train import step as T
from zoo import layers


class TwoMomenta(nn.Module):
    """conv -> BN (Keras MobileNetV2's 0.999) -> conv -> BN (0.99) -> pool -> dense."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = layers.Conv(8, 3, 2, use_bias=False, name="conv1")(x)
        x = layers.batch_norm(epsilon=1e-3, momentum=0.999, dtype=jnp.float32, name="bn1",
                              act=nn.relu)(x, use_running_average=not train)
        x = layers.Conv(16, 3, 1, use_bias=False, name="conv2")(x)
        x = layers.batch_norm(epsilon=1e-3, momentum=0.99, dtype=jnp.float32, name="bn2",
                              act=nn.relu)(x, use_running_average=not train)
        return nn.Dense(2, name="head")(x.mean((1, 2)))


def _setup():
    model = TwoMomenta()
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 12, 12, 3)) * 255.0
    v = model.init(jax.random.PRNGKey(0), x[0], train=False)
    # running statistics far from the truth, as a lagging average leaves them
    stats = jax.tree.map(lambda s: s + 5.0, v["batch_stats"])
    mesh = T.make_mesh()
    return model, x, v["params"], stats, mesh


def _batch_stats_by_hand(model, params, stats, x):
    """Each BN's input (its conv's output, train mode) -> its mean and variance."""
    _, inter = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats", "intermediates"], capture_intermediates=True)
    out = {}
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        h = np.asarray(inter["intermediates"][conv]["__call__"][0], np.float64)
        out[(bn, "mean")], out[(bn, "var")] = h.mean((0, 1, 2)), h.var((0, 1, 2))
    return out


def test_the_batch_statistics_whatever_the_momentum():
    model, x, params, stats, mesh = _setup()
    fn = PB.make_stats_fn(model, lambda im: im / 255.0, lambda path: True, mesh)
    got = traverse_util.flatten_dict(fn(params, stats, x[0]))
    want = _batch_stats_by_hand(model, params, stats, x[0] / 255.0)
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k]), v, rtol=2e-3, atol=1e-5, err_msg=str(k))
    # over several batches: the mean of their statistics, in the state
    state = T.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                         opt_state=(), rng=jax.random.PRNGKey(0))
    new = traverse_util.flatten_dict(PB.recompute(fn, state, list(x)).batch_stats)
    per = [_batch_stats_by_hand(model, params, stats, b / 255.0) for b in x]
    for k in want:
        np.testing.assert_allclose(np.asarray(new[k]), np.mean([p[k] for p in per], 0),
                                   rtol=2e-3, atol=1e-5, err_msg=str(k))


def test_frozen_statistics_stay_and_their_layer_normalises_with_them():
    model, x, params, stats, mesh = _setup()
    frozen = lambda path: not path.startswith("bn1/")  # noqa: E731
    fn = PB.make_stats_fn(model, lambda im: im / 255.0, frozen, mesh)
    got = traverse_util.flatten_dict(fn(params, stats, x[0]))
    old = traverse_util.flatten_dict(stats)
    for k in (("bn1", "mean"), ("bn1", "var")):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(old[k]))
    # bn2 sees what bn1 gives in training: bn1 on its (frozen) running statistics
    from train.freeze import frozen_batch_norm

    with frozen_batch_norm(frozen):
        _, inter = model.apply({"params": params, "batch_stats": stats}, x[0] / 255.0,
                               train=True, mutable=["batch_stats", "intermediates"],
                               capture_intermediates=True)
    h = np.asarray(inter["intermediates"]["conv2"]["__call__"][0], np.float64)
    np.testing.assert_allclose(np.asarray(got[("bn2", "mean")]), h.mean((0, 1, 2)), rtol=2e-3,
                               atol=1e-5)
    assert not PB.any_moving(stats, lambda path: False)


@pytest.mark.slow  # two tiny training runs (~1 min)
def test_a_run_recomputes_before_validation_and_training_is_unchanged(tmp_path):
    with registered():
        plain = loop.train_and_evaluate(tiny_config(), str(tmp_path / "plain"))
        precise = loop.train_and_evaluate(tiny_config(recompute_bn_batches=3),
                                          str(tmp_path / "precise"))
        a = C.restore_variables(str(tmp_path / "plain" / "checkpoints" / "last"))
        b = C.restore_variables(str(tmp_path / "precise" / "checkpoints" / "last"))
        # training mode normalises with batch statistics: the weights are the same ...
        for path, leaf in traverse_util.flatten_dict(a["params"]).items():
            np.testing.assert_array_equal(leaf, traverse_util.flatten_dict(b["params"])[path])
        # ... the running statistics are the last 3 batches' own, recomputed by hand
        config = tiny_config(recompute_bn_batches=3)
        mesh = T.make_mesh()
        task = loop.SETUP["classification"](config, str(tmp_path / "precise"), mesh)
        make, per_epoch = task.train_loader.batch_maker(), len(task.train_loader)
        images = [task.normalize(make((config.epochs - 1) * per_epoch + k)["image"])
                  for k in range(per_epoch - 3, per_epoch)]
        got = traverse_util.flatten_dict(b["batch_stats"])
        moved = traverse_util.flatten_dict(a["batch_stats"])
        for name in ("stem", "stage1", "stage2"):
            h = []
            for x in images:
                _, inter = task.model.apply(
                    {"params": b["params"], "batch_stats": b["batch_stats"]}, x, train=True,
                    mutable=["batch_stats", "intermediates"], capture_intermediates=True,
                    rngs={"dropout": jax.random.PRNGKey(0)})
                h.append(np.asarray(inter["intermediates"][name]["conv"]
                                    ["__call__"][0], np.float64))
            mean = np.mean([y.mean((0, 1, 2)) for y in h], 0)
            key = next(k for k in got if name in k and k[-1] == "mean")
            np.testing.assert_allclose(got[key], mean, rtol=5e-3, atol=1e-5, err_msg=name)
            assert not np.allclose(moved[key], mean, rtol=5e-3, atol=1e-5), name
    assert set(plain) == set(precise)
