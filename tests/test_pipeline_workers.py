"""The loader's worker processes (grain) serve exactly the threads' batches, across epochs,
from a resumed position and in repeated evaluation passes; the in-memory cache is bounded."""

import logging
import subprocess
import sys

import numpy as np
import pytest

from train import data as D
from train import pipeline as P
from train.pipeline import Augment, Loader

AUG = Augment(hflip=True, rotation=20, brightness=0.2, crop_scale=0.8, saturation=0.1)


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.slow  # two streams of two spawned workers: ~17 s
def test_worker_processes_serve_the_threads_batches():
    src = D.synthetic_source(120, seed=1)
    kw = dict(batch_size=16, image_size=24, train=True, augment=AUG, seed=3, prefetch=1)
    threads = Loader(src, np.arange(120), processes=0, **kw)
    workers = Loader(src, np.arange(120), processes=2, **kw)
    for epoch in range(2):  # one stream of batches across epochs
        _same(list(threads.epoch(epoch)), list(workers.epoch(epoch)))
    assert workers._live[0] == (2, 0)
    # a resumed run asks for another position: a new stream starts there
    _same(list(threads.epoch(3, 4)), list(workers.epoch(3, 4)))
    # stopped inside an epoch (max_steps), the next ask goes on from where it stopped
    it = workers.epoch(4)
    first = [next(it), next(it)]
    it.close()
    _same(list(threads.epoch(4))[:2], first)
    assert workers._live[0] == (4, 2)
    _same(list(threads.epoch(4, 2)), list(workers.epoch(4, 2)))


def test_evaluation_passes_from_workers_are_all_alike_and_padded():
    src = D.synthetic_source(37, seed=2)
    ref = list(Loader(src, np.arange(37), batch_size=8, image_size=24).epoch(0))
    ev = Loader(src, np.arange(37), batch_size=8, image_size=24, processes=1)
    _same(ref, list(ev.epoch(0)))
    _same(ref, list(ev.epoch(0)))
    assert ref[-1]["mask"].tolist() == [1] * 5 + [0] * 3


def test_the_image_cache_stops_at_its_limit_and_says_so(caplog):
    src = D.synthetic_source(40, seed=0)
    one = 24 * 24 * 3
    loader = Loader(src, np.arange(40), batch_size=8, image_size=24,
                    cache_mb=10.5 * one / 2**20)
    with caplog.at_level(logging.INFO, logger="train.pipeline"):
        list(loader.epoch(0))
        list(loader.epoch(0))
    assert len(loader._cache.items) == 10 and loader._cache.bytes == 10 * one
    assert sum("image cache full" in r.message for r in caplog.records) == 1
    assert len(Loader(src, np.arange(40), batch_size=8, image_size=24, cache=False)
               ._cache.items) == 0


def test_processes_auto_leaves_two_cores_to_the_training():
    script = ("import os; from train import pipeline as P; os.sched_setaffinity(0, {cores}); "
              "print(P.auto_processes())")
    got = [subprocess.run([sys.executable, "-c", script.format(cores=set(range(n)))],
                          capture_output=True, text=True, check=True).stdout.strip()
           for n in (1, 2)]
    assert got == ["0", "0"]
    assert P.auto_processes() == min(8, max(0, len(__import__("os").sched_getaffinity(0)) - 2))


@pytest.mark.parametrize("processes", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_source_that_fails_names_itself(processes):
    src = D.synthetic_source(16, seed=0)

    def broken(i):
        raise OSError(f"cannot read example {i}")

    bad = D.Source("broken", src.class_names, src.labels, None, broken)
    with pytest.raises(Exception, match="cannot read example"):
        list(Loader(bad, np.arange(16), batch_size=8, image_size=24,
                    processes=processes).epoch(0))


def test_close_stops_the_worker_processes():
    import multiprocessing

    src = D.synthetic_source(16, seed=0)
    loader = Loader(src, np.arange(16), batch_size=8, image_size=16, processes=1)
    list(loader.epoch(0))
    assert multiprocessing.active_children()  # the stream's worker waits for the next pass
    loader.close()
    assert not multiprocessing.active_children()
    assert len(list(loader.epoch(0))) == 2  # asked again, it starts new ones
    loader.close()
