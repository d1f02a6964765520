"""A small thread-safe LRU of results keyed by the bytes of their inputs.

A visitor who changes the steps or the guidance and presses Generate again sends the same portrait
and the same speech: their latents and SpeechAE codes are kept here, so the second generation
starts sampling at once instead of re-running Whisper on a 30-s window.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")


class Memo:
    def __init__(self, size: int = 16):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    @staticmethod
    def key(*parts) -> str:
        """SHA-1 of the parts: arrays by their bytes, anything else by its repr."""
        h = hashlib.sha1()
        for part in parts:
            h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
        return h.hexdigest()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        """The kept value for `key`, else `compute()` (outside the lock), kept for next time."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
