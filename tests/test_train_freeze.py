"""Freezing policies: frozen parameters and batch-norm statistics never move; no optimizer
state and no weight decay for them; batch norm of frozen parts runs in inference mode."""

import jax
import numpy as np
import pytest

import zoo
from tests.tiny_model import registered, tiny_config
from train import classification, loop
from train import freeze as F
from train import step as T


@pytest.fixture(scope="module")
def tiny():
    with registered() as name:
        yield name


def build(config, num_classes, total_steps):
    """The classification network, its variables, trainable predicate and optimizer."""
    spec = zoo.spec(config.model.name)
    model, variables = classification.build(config, num_classes)
    trainable, _, tx = F.optimizer_for(config, spec, variables["params"], total_steps)
    return {"model": model, "variables": variables, "trainable": trainable, "tx": tx}


def run_steps(config, n=3):
    """``n`` training steps on random batches; (labels, start state, end state)."""
    b = build(config, 2, total_steps=10)
    spec = zoo.spec(config.model.name)
    mesh = T.make_mesh(1)
    train_fn, _ = T.jit_steps(T.make_train_step(b["model"], b["tx"], b["trainable"],
                                                spec.normalize,
                                                freeze_bn_stats=config.freeze_bn_stats),
                              T.make_eval_step(b["model"], spec.normalize), mesh)
    state = T.replicate(T.create_state(b["variables"], b["tx"], 0), mesh)
    start = jax.tree.map(np.array, state)
    rng = np.random.default_rng(0)
    for _ in range(n):
        batch = {"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                 "label": rng.integers(0, 2, 8).astype(np.int32), "mask": np.ones(8, np.float32)}
        state, _ = train_fn(state, T.shard_batch(batch, mesh))
    labels = F.param_labels(b["variables"]["params"], spec, b["trainable"])
    return F.flat_paths(labels), b["trainable"], start, jax.tree.map(np.array, state)


@pytest.mark.parametrize("policy,groups,frozen_prefixes", [
    ("frozen", 0, ("stem/", "stage1/", "stage2/")),
    ("finetune", 1, ("stem/", "stage1/")),
    ("finetune:2", 0, ("stem/",)),
    ("regex:^(stage2|head)/", 0, ("stem/", "stage1/")),
])
def test_frozen_parts_are_bit_identical_and_trainable_parts_move(tiny, policy, groups,
                                                                  frozen_prefixes):
    # A large weight decay would visibly move any "frozen" kernel that reached it.
    config = tiny_config(policy=policy, finetune_groups=groups, weight_decay=0.5,
                         learning_rate=0.05)
    labels, trainable, start, end = run_steps(config)
    p0, p1 = F.flat_paths(start.params), F.flat_paths(end.params)
    for path, label in labels.items():
        assert (label == "frozen") == path.startswith(frozen_prefixes), path
        same = np.array_equal(p0[path], p1[path])
        assert same == (label == "frozen"), f"{path} ({label}) moved: {not same}"
    s0, s1 = F.flat_paths(start.batch_stats), F.flat_paths(end.batch_stats)
    assert s0, "the tiny net has batch norm"
    for path in s0:
        same = np.array_equal(s0[path], s1[path])
        assert same == path.startswith(frozen_prefixes), f"batch stat {path}"


def test_frozen_leaves_have_no_optimizer_moments(tiny):
    config = tiny_config(policy="finetune", finetune_groups=1)
    labels, _, start, _ = run_steps(config, n=1)
    n_trainable = sum(int(np.prod(np.shape(v))) for p, v in F.flat_paths(start.params).items()
                      if labels[p] != "frozen")
    n_total = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(start.params))
    moments = sum(int(np.size(x)) for x in jax.tree.leaves(start.opt_state) if np.size(x) > 1)
    assert n_trainable < n_total
    assert moments == 2 * n_trainable  # Adam mu + nu for trainable leaves only


def test_frozen_batch_norm_runs_in_inference_mode(tiny):
    """Under the interceptor a train-mode call uses running averages for frozen layers."""
    config = tiny_config(policy="frozen")
    b = build(config, 2, total_steps=1)
    model, v = b["model"], b["variables"]
    v = {"params": v["params"], "batch_stats": jax.tree.map(lambda s: s + 0.5, v["batch_stats"])}
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    inference = apply(v, x, train=False)

    @jax.jit
    def frozen_apply(v, x):
        with F.frozen_batch_norm(b["trainable"]):
            return model.apply(v, x, train=True, mutable=["batch_stats"])

    frozen_train, new = frozen_apply(v, x)
    np.testing.assert_array_equal(np.asarray(frozen_train), np.asarray(inference))
    same = jax.tree.map(np.array_equal, new["batch_stats"], v["batch_stats"])
    assert all(jax.tree.leaves(same))
    plain_train, _ = apply(v, x, train=True, mutable=("batch_stats",))
    assert not np.allclose(np.asarray(plain_train), np.asarray(inference))


def test_mlp_head_lives_under_head_and_backbone_keeps_zoo_paths(tiny):
    config = tiny_config(policy="frozen", **{"head.kind": "mlp", "head.hidden": 12})
    b = build(config, 3, total_steps=1)
    paths = F.flat_paths(b["variables"]["params"])
    assert {p for p in paths if p.startswith("head/")} == {
        "head/dense1/kernel", "head/dense1/bias", "head/dense2/kernel", "head/dense2/bias"}
    assert "stem/conv/kernel" in paths and paths["head/dense2/kernel"].shape == (12, 3)
    labels = F.flat_paths(F.param_labels(b["variables"]["params"], zoo.spec(config.model.name),
                                         b["trainable"]))
    assert {p for p, lab in labels.items() if lab != "frozen"} == {
        p for p in paths if p.startswith("head/")}


def test_full_rate_groups_train_at_the_heads_rate(tiny):
    """A group in full_rate_groups (a detector's new neck) steps at the head's learning
    rate while the rest of the backbone steps at backbone_lr_scale x it."""
    config = tiny_config(policy="full", optimizer="adam", learning_rate=0.01,
                         backbone_lr_scale=0.01, full_rate_groups="stage2")
    spec = zoo.spec(tiny)
    b = build(config, 2, total_steps=10)
    _, labels, _ = F.optimizer_for(config, spec, b["variables"]["params"], 10)
    labels = F.flat_paths(labels)
    assert {lab for p, lab in labels.items() if p.startswith(("stage2/", "head/"))} == {"head"}
    assert {lab for p, lab in labels.items() if p.startswith(("stem/", "stage1/"))} == {
        "backbone"}
    lines = F.describe(b["variables"]["params"], F.optimizer_for(
        config, spec, b["variables"]["params"], 10)[1], spec, F.backbone_scale(config))
    rated = {line.split()[0] for line in lines if "(learning rate x 0.01)" in line}
    assert rated == {"stem", "stage1"}, lines
    # Adam's first steps move a parameter by about the learning rate (lr x sign of the
    # gradient); the tiny config warms up, so the first nonzero rate is the schedule's at 1
    _, _, start, end = run_steps(config, n=2)
    lr = float(F.schedule(config, 10)(1))
    p0, p1 = F.flat_paths(start.params), F.flat_paths(end.params)
    step = {p: float(np.abs(p1[p] - p0[p]).max()) / lr for p in p0 if p.endswith("kernel")}
    assert all(0.5 < v <= 1.01 for p, v in step.items() if p.startswith("stage2/")), step
    assert all(0 < v <= 0.0101 for p, v in step.items() if p.startswith("stage1/")), step
    with pytest.raises(ValueError, match="has no group 'neck'"):
        F.optimizer_for(tiny_config(full_rate_groups="stage2, neck"), spec,
                        b["variables"]["params"], 10)


def test_policy_errors_name_the_problem(tiny, tmp_path):
    spec = zoo.spec(tiny)
    with pytest.raises(ValueError, match="unknown policy"):
        F.trainable_fn(spec, "freeze")
    with pytest.raises(ValueError, match="groups below the head"):
        F.trainable_fn(spec, "finetune", 7)
    with pytest.raises(ValueError, match="scratch"):
        loop.train_and_evaluate(tiny_config(policy="scratch", init="/somewhere"), str(tmp_path))


def test_freeze_bn_stats_keeps_statistics_while_scale_and_bias_train(tiny):
    config = tiny_config(policy="full", freeze_bn_stats=True, learning_rate=0.05)
    _, _, start, end = run_steps(config, n=2)
    s0, s1 = F.flat_paths(start.batch_stats), F.flat_paths(end.batch_stats)
    assert s0 and all(np.array_equal(s0[p], s1[p]) for p in s0)
    p0, p1 = F.flat_paths(start.params), F.flat_paths(end.params)
    assert not np.array_equal(p0["stage1/bn/scale"], p1["stage1/bn/scale"])
