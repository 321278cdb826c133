"""Give memory the server has freed back to the operating system.

Sessions and chat requests allocate large short-lived buffers (message text, base64 frames,
decoded pictures) from many threads. glibc keeps what they free inside its heaps, and returns
only the free space at a heap's top, so after a burst of abuse the resident size stays near the
burst's peak although the objects are gone (measured: 598 MB resident, 337 MB after one
``malloc_trim``; Python's own live objects were under 1 MB more than before the burst).
``HeapTrimmer`` calls ``malloc_trim(0)`` on a worker thread a few seconds after work of that
kind ends, at most once per interval (a trim that returns 250 MB takes 16 ms; one with nothing to
return, 0.05 ms). Elsewhere than glibc it does nothing.

Before trimming it runs the cycle collector: a session, its socket and its tasks end in reference
cycles that only the collector frees, and left to its own schedule it lets them pile up (after
three minutes of abuse: 303 MB resident, 266 MB after a collection and a trim, 303 MB after a
trim alone). A full collection of the embedded default's objects takes 47 ms, so the gateway
freezes what exists once the models are loaded (``gc.freeze``: never collected, still freed when
unreferenced), and a collection only walks what came after.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


class HeapTrimmer:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.trim = _malloc_trim() if interval_s > 0 else None
        self.trims = 0
        self._due = asyncio.Event()

    def mark(self) -> None:
        """A session or request ended: trim within ``interval_s``."""
        self._due.set()

    async def watch(self) -> None:
        if self.trim is None:
            return
        while True:
            await self._due.wait()
            await asyncio.sleep(self.interval_s)  # let a burst end, and trim once for it
            self._due.clear()
            began = time.perf_counter()
            found = gc.collect()  # sessions and sockets end in reference cycles
            collected = time.perf_counter()
            await asyncio.to_thread(self.trim, 0)  # ctypes lets go of the interpreter lock
            self.trims += 1
            log.debug("heap trimmed: %d objects in cycles collected in %.1f ms, trimmed in "
                      "%.1f ms", found, 1000 * (collected - began),
                      1000 * (time.perf_counter() - collected))
