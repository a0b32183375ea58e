"""Running a function over many items on every core, in order, so results never depend on the
core count: worker processes for the stages' decoding, threads for the commands."""
from __future__ import annotations

import collections
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    """The cores this process may run on (``taskset`` and cgroup cpusets count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def process_batches(fn: Callable[[T], R], items: list[T], size: int, ahead: int = 2) -> Iterator[list[R]]:
    """``fn`` over ``items`` in worker processes, one per core, yielded ``size`` results at a time,
    in order (so the output never depends on the core count), with ``ahead`` batches in flight:
    the workers decode the next batches while the caller works on this one, and memory holds a
    few batches, never all results.

    Processes, not threads: Pillow releases the GIL only inside the decode itself, and for a
    small image most of the work is Python-side (Pillow's wrappers, NumPy conversion, the
    per-image calls) and holds it, so threads would mostly take turns on one core.
    ``fn`` must be picklable: a module-level function, or a ``functools.partial`` of one. The
    workers are spawned, never forked, since the caller may have TensorFlow's threads running.
    One core: everything runs here, with no workers."""
    starts = range(0, len(items), size)
    if cores() == 1:
        yield from ([fn(item) for item in items[start:start + size]] for start in starts)
        return
    workers = cores()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: collections.deque = collections.deque()
        for start in starts:
            part = items[start:start + size]
            pending.append(pool.map(fn, part, chunksize=max(1, len(part) // (4 * workers))))
            if len(pending) > ahead:
                yield _results(pending.popleft())
        while pending:
            yield _results(pending.popleft())


def _results(batch: Iterator[R]) -> list[R]:
    """A worker's results; its exception as the worker raised it. concurrent.futures chains the
    worker's traceback text to it as a cause; that text becomes a note instead (shown with the
    whole traceback under PIPELINE_DEBUG=1), so the user's one line stays the error's own."""
    try:
        return list(batch)
    except Exception as err:
        if err.__cause__ is not None:
            err.add_note(f"in a worker process:{err.__cause__}")
            err.__cause__ = None
        raise


def process_map(fn: Callable[[T], R], items: list[T], size: int = 256) -> Iterator[R]:
    """``process_batches`` one result at a time."""
    for batch in process_batches(fn, items, size):
        yield from batch


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``map`` over threads, in order, so the result never depends on the thread count. For the
    commands (predict, rank): no worker processes to spawn and no ``fn`` to pickle, in a process
    that already holds a model. Threads overlap waiting on disk and the parts of decoding that
    release the GIL (Pillow's decode itself); the Python-side work takes turns (``process_batches``
    says why the stages use processes). The default (``ThreadPoolExecutor``'s: cores + 4, at most
    32) keeps the threads busy."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)
