"""Freezing policies: parameter labels for ``optax.multi_transform`` and frozen batch norm.

Each parameter path (``stage4/block2/conv1/kernel``) gets one label:

- ``head``: the classifier, full learning rate;
- ``backbone``: a trainable non-head parameter, learning rate x ``backbone_lr_scale``
  (except in ``full_rate_groups``: a detector's new neck on a pretrained backbone is
  ``head`` too);
- ``frozen``: ``optax.set_to_zero()``; ``multi_transform`` masks it out of the other
  transforms, so it has no optimizer moments and no weight decay.

Batch norm follows Keras ``trainable=False``: a batch-norm layer whose statistics are
frozen runs in inference mode (running averages, statistics never written) even in a
training step. The models are not told: :func:`frozen_batch_norm` intercepts each
``nn.BatchNorm`` call with ``flax.linen.intercept_methods`` and forces
``use_running_average=True`` where the policy freezes that layer.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import linen as nn
from flax import traverse_util

from zoo.registry import ModelSpec

log = logging.getLogger(__name__)

POLICIES = ("frozen", "finetune", "finetune:N", "full", "scratch")


def flat_paths(tree: Any) -> dict[str, Any]:
    """``{'stage1/block1/conv1/kernel': leaf}`` of a nested parameter dict."""
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def trainable_fn(spec: ModelSpec, policy: str, finetune_groups: int = 2) -> Callable[[str], bool]:
    """Whether a parameter or batch-norm statistic path trains under ``policy``.

    ``finetune`` trains the top ``finetune_groups`` groups below the head (``finetune:N``
    sets N in the name, as ``viz`` spells it); ``regex:<pattern>`` trains the paths that
    the pattern matches (``re.search``).
    """
    if policy.startswith("regex:"):
        rx = re.compile(policy[len("regex:"):])
        return lambda path: rx.search(path) is not None
    if policy in ("full", "scratch"):
        return lambda path: True
    if policy == "frozen":
        return lambda path: spec.group_of(path) == "head"
    if policy.startswith("finetune:") and policy[len("finetune:"):].isdigit():
        policy, finetune_groups = "finetune", int(policy[len("finetune:"):])
    if policy == "finetune":
        backbone = [g for g in spec.group_names if g != "head"]
        if not 0 <= finetune_groups <= len(backbone):
            raise ValueError(f"finetune_groups={finetune_groups}: {spec.name} has "
                             f"{len(backbone)} groups below the head: {backbone}")
        top = set(backbone[len(backbone) - finetune_groups:]) | {"head"}
        return lambda path: spec.group_of(path) in top
    raise ValueError(f"unknown policy {policy!r}; use one of {POLICIES} or 'regex:<pattern>'")


def param_labels(params: Any, spec: ModelSpec, trainable: Callable[[str], bool],
                 full_rate: Sequence[str] = ()) -> Any:
    """The label tree (``head`` / ``backbone`` / ``frozen``) over ``params``; trainable
    parameters of the spec groups ``full_rate`` are ``head`` (the full learning rate)."""

    def label(path: tuple[str, ...], _: Any) -> str:
        p = "/".join(path)
        if not trainable(p):
            return "frozen"
        if p.startswith(spec.head + "/") or (full_rate and spec.group_of(p) in full_rate):
            return "head"
        return "backbone"

    return traverse_util.path_aware_map(label, params)


def schedule(config, total_steps: int) -> Callable:
    """The head's learning rate at each step (the backbone's is ``backbone_lr_scale`` x it)."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else config.learning_rate,
                                                  config.learning_rate, warmup,
                                                  max(total_steps, warmup + 1))
    if config.schedule == "constant":
        return optax.linear_schedule(0.0, config.learning_rate, warmup) if warmup else (
            lambda step: config.learning_rate)
    raise ValueError(f"config.schedule must be 'cosine' or 'constant', got {config.schedule!r}")


def backbone_scale(config) -> float:
    """The learning-rate factor of ``backbone``-labelled parameters (1 from scratch)."""
    return 1.0 if config.policy == "scratch" else config.backbone_lr_scale


def make_optimizer(config, labels: Any, total_steps: int) -> optax.GradientTransformation:
    """``multi_transform`` of the configured optimizer over the label tree."""
    lr = schedule(config, total_steps)
    scale = backbone_scale(config)
    transforms = {"head": _optimizer(config, lr, 1.0), "backbone": _optimizer(config, lr, scale),
                  "frozen": optax.set_to_zero()}
    used = set(traverse_util.flatten_dict(labels).values())
    tx = optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), tx) if config.grad_clip else tx


def optimizer_for(config, spec: ModelSpec, params: Any, total_steps: int
                  ) -> tuple[Callable[[str], bool], Any, optax.GradientTransformation]:
    """``(trainable, labels, tx)`` of ``config.policy`` over ``params`` for a run of
    ``total_steps``."""
    trainable = trainable_fn(spec, config.policy, config.finetune_groups)
    labels = param_labels(params, spec, trainable, full_rate_groups(config, spec))
    return trainable, labels, make_optimizer(config, labels, total_steps)


def full_rate_groups(config, spec: ModelSpec) -> tuple[str, ...]:
    """``config.full_rate_groups`` as group names of ``spec`` (checked)."""
    groups = tuple(g.strip() for g in config.get("full_rate_groups", "").split(",") if g.strip())
    unknown = [g for g in groups if g not in spec.group_names]
    if unknown:
        raise ValueError(f"config.full_rate_groups: {spec.name} has no group "
                         f"{', '.join(map(repr, unknown))}; its groups: "
                         f"{', '.join(spec.group_names)}")
    return groups


def _optimizer(config, lr: Callable, scale: float) -> optax.GradientTransformation:
    sched = lambda step: lr(step) * scale
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    if config.optimizer == "adamw":
        return optax.adamw(sched, weight_decay=config.weight_decay, mask=decay_mask)
    if config.optimizer == "adam":
        return optax.adam(sched)
    if config.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(config.weight_decay, decay_mask),
                           optax.sgd(sched, momentum=0.9, nesterov=True))
    raise ValueError(f"config.optimizer must be adamw, adam or sgd, got {config.optimizer!r}")


@contextlib.contextmanager
def frozen_batch_norm(trainable: Callable[[str], bool]):
    """Within this context, batch-norm layers with frozen statistics use running averages."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if (isinstance(module, nn.BatchNorm) and context.method_name == "__call__"
                and not trainable("/".join(module.path) + "/mean")):
            args, kwargs = args[:1], {**kwargs, "use_running_average": True}
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def describe(params: Any, labels: Any, spec: ModelSpec, backbone_scale: float = 1.0
             ) -> list[str]:
    """Human-readable lines: each spec group, its parameter count, whether it trains, and at
    which fraction of the learning rate when not the full one (``backbone_scale``)."""
    sizes, labs = flat_paths(params), flat_paths(labels)
    rows: dict[str, list[int]] = {g: [0, 0, 0] for g in spec.group_names}
    for path, leaf in sizes.items():
        try:
            group = spec.group_of(path)
        except ValueError:
            group = "(no group)"
        n = int(np.prod(leaf.shape))
        r = rows.setdefault(group, [0, 0, 0])  # '(no group)' appears only when needed
        r[0] += n
        r[1] += n if labs[path] != "frozen" else 0
        r[2] += n if labs[path] == "backbone" else 0
    lines = [f"  {g:<12} {t:>12,} of {n:>12,} parameters train"
             + (f" (learning rate x {backbone_scale:g})" if b and backbone_scale != 1 else "")
             for g, (n, t, b) in rows.items()]
    total = sum(r[0] for r in rows.values())
    trainable = sum(r[1] for r in rows.values())
    lines.append(f"  {'total':<12} {trainable:>12,} of {total:>12,} parameters train")
    return lines
