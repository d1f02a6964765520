"""Run an iterator ahead of its consumer, on a worker thread.

READ uses it to put its two halves on the two cores of a CPU Space when torch leaves a core free:
the DiT samples clip k + 1 on the worker while the calling thread decodes clip k; a pipeline with a
frame refiner puts the VAE decoder on a second worker and refines on the calling thread, and photo
mode adds a stage the same way (the warp of the photo for the clip before). Torch, OpenCV and numpy
release the GIL inside their kernels, so the stages really run side by side.
"""
from __future__ import annotations

import contextvars
import os
import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def spare_core() -> bool:
    """Whether torch's intra-op threads leave one of this process's CPU cores free for a second stage."""
    import torch

    return torch.get_num_threads() < cpu_cores()


def run_ahead(iterable: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield the items of `iterable` in order, produced on a worker thread up to `depth` items ahead.

    The worker runs in a copy of the caller's `contextvars` context, so context-bound state (Gradio's
    progress tracking, for one) follows the work. An exception raised by `iterable` is re-raised here,
    after the items produced before it. Closing this generator early (a Stop, a `break`) lets the worker
    finish the item it is producing, then closes `iterable` on the worker thread and waits for it: no
    work is left running once `close()` returns.

    depth: items produced but not yet consumed, >= 1 (memory bound: `depth` items).
    Raises: ValueError for depth < 1; whatever `iterable` raises.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        it = iter(iterable)
        try:
            for item in it:
                items.put((item, None))
                if stop.is_set():
                    return
            items.put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            items.put((_END, e))
        finally:
            getattr(it, "close", lambda: None)()

    worker = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name="run-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()  # the worker puts at most one more item after this, and the emptied queue has room for it
        while True:
            try:
                items.get_nowait()
            except queue.Empty:
                break
        worker.join()
