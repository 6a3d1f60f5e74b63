"""Freezing policies as predicates over parameter paths (``stage1/block1/conv1/kernel``).

Drawings and summaries colour what a policy trains; the trainer can share the same
reading of a policy (``frozen``, ``finetune:N``, ``full``, group lists, regexes) through
:func:`trainable_fn` and :func:`param_labels`. Named policies are resolved against the
model's ``ModelSpec.groups`` (ordered from the input side to ``head``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from flax import traverse_util

Policy = str | Sequence[str] | re.Pattern | Callable[[str], bool] | None
NAMED = ("full", "scratch", "frozen", "finetune", "finetune:N")
FINETUNE_GROUPS = 2  # 'finetune' without N, as the trainer's default


def trainable_groups(policy: str, spec: Any) -> tuple[str, ...]:
    """The spec groups a named policy trains: ``frozen`` -> head, ``finetune:N`` -> top N + head."""
    names = tuple(spec.group_names)
    if policy in ("full", "scratch"):
        return names
    if policy == "frozen":
        return ("head",)
    m = re.fullmatch(r"finetune(?::(\d+))?", policy)
    if m is None:
        raise ValueError(f"unknown policy {policy!r}; named policies are {NAMED}")
    n = FINETUNE_GROUPS if m.group(1) is None else int(m.group(1))
    body = names[:-1]
    if n > len(body):
        raise ValueError(
            f"{spec.name}: finetune:{n} asks for {n} groups but there are {len(body)} below "
            f"the head: {body}"
        )
    return (*body[len(body) - n :], "head")


def trainable_fn(policy: Policy, spec: Any = None) -> Callable[[str], bool]:
    """A predicate ``param path -> trains?`` for a policy.

    ``policy`` is one of: ``None``, ``'full'`` or ``'scratch'`` (everything trains);
    ``'frozen'`` (the head only); ``'finetune:N'`` (the top N groups and the head;
    ``'finetune'``: N = 2);
    a list of group names; a callable, used as is; or any other string / compiled
    regex, matched (``re.search``) against parameter paths to select what trains.
    Group-based policies need ``spec`` (a ``ModelSpec`` or a registered name).
    """
    if policy is None:
        return lambda path: True
    if callable(policy) and not isinstance(policy, re.Pattern):
        return policy
    if isinstance(policy, re.Pattern):
        return lambda path: policy.search(path) is not None
    if isinstance(policy, str) and not (
        policy in ("full", "scratch", "frozen") or policy.startswith("finetune")
    ):
        rx = re.compile(policy)
        return lambda path: rx.search(path) is not None
    if isinstance(spec, str):
        import zoo

        spec = zoo.spec(spec)
    if spec is None:
        raise ValueError(
            f"policy {policy!r} is defined over the model's groups: pass the model's name or "
            "ModelSpec, or give a regex / callable over parameter paths instead"
        )
    if isinstance(policy, str):
        groups = set(trainable_groups(policy, spec))
    else:
        groups = set(policy)
        unknown = sorted(groups - set(spec.group_names))
        if unknown:
            raise ValueError(f"{spec.name}: unknown groups {unknown}; groups: {spec.group_names}")
    return lambda path: spec.group_of(path) in groups


def param_labels(params: Any, trainable: Callable[[str], bool]) -> Any:
    """A tree like ``params`` with ``'trainable'`` / ``'frozen'`` leaves (optax.multi_transform)."""
    return traverse_util.path_aware_map(
        lambda path, _: "trainable" if trainable("/".join(path)) else "frozen", params
    )
