"""Read a run's TensorBoard event files back, as TensorBoard does, without TensorBoard:
the TFRecord framing by hand, the records with tensorboardX's protos."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any


def summaries(workdir: str) -> Iterator[tuple[int, Any]]:
    """``(step, Summary.Value)`` of every value in ``<workdir>/tensorboard``."""
    from tensorboardX.proto import event_pb2

    folder = os.path.join(workdir, "tensorboard")
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        at = 0
        while at + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
            at += 12 + n + 4
            for v in event.summary.value:
                yield event.step, v


def tags(workdir: str) -> set[tuple[str, str]]:
    """``(tag, kind)`` of every value: ``('train_step/loss', 'simple_value')``..."""
    return {(v.tag, v.WhichOneof("value")) for _, v in summaries(workdir)}


def hparams(workdir: str) -> tuple[Any, Any, Any, dict[str, float]]:
    """What TensorBoard's HPARAMS tab reads of a run: ``(experiment, session start info,
    session end info, {scalar tag: last value})`` (None for a summary not written)."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    found, scalars = {}, {}
    for _, v in summaries(workdir):
        if v.metadata.plugin_data.plugin_name == "hparams":
            data = HParamsPluginData.FromString(v.metadata.plugin_data.content)
            kind = data.WhichOneof("data")
            found[kind] = getattr(data, kind)
        elif v.WhichOneof("value") == "simple_value":
            scalars[v.tag] = v.simple_value
    return (found.get("experiment"), found.get("session_start_info"),
            found.get("session_end_info"), scalars)
