"""Freezing policies as predicates over parameter paths, for drawings and summaries.

Named policies (``frozen``, ``finetune``, ``finetune:N``, ``full``, ``scratch``,
``regex:<pattern>``) mean exactly what they mean to the trainer: they are resolved by
:func:`train.freeze.trainable_fn`. Drawings also accept a list of group names, a compiled
regex, a bare regex string, or any callable ``path -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from train import freeze

Policy = str | Sequence[str] | re.Pattern | Callable[[str], bool] | None


def _named(policy: str) -> bool:
    return policy in ("full", "scratch", "frozen") or policy.startswith("finetune")


def trainable_fn(policy: Policy, spec: Any = None) -> Callable[[str], bool]:
    """A predicate ``param path -> trains?`` for a policy (see the module docstring).

    Group-based policies need ``spec`` (a ``ModelSpec`` or a registered name).
    """
    if policy is None:
        return lambda path: True
    if isinstance(policy, re.Pattern):
        return lambda path: policy.search(path) is not None
    if callable(policy):
        return policy
    if isinstance(policy, str) and not _named(policy):
        pattern = policy.removeprefix("regex:")
        return freeze.trainable_fn(spec, f"regex:{pattern}")
    if isinstance(spec, str):
        import zoo

        spec = zoo.spec(spec)
    if spec is None:
        raise ValueError(
            f"policy {policy!r} is defined over the model's groups: pass the model's name or "
            "ModelSpec, or give a regex / callable over parameter paths instead"
        )
    if isinstance(policy, str):
        return freeze.trainable_fn(spec, policy)
    groups = set(policy)
    unknown = sorted(groups - set(spec.group_names))
    if unknown:
        raise ValueError(f"{spec.name}: unknown groups {unknown}; groups: {spec.group_names}")
    return lambda path: spec.group_of(path) in groups
