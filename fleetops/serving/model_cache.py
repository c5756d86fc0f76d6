"""Loaded models kept within a limit by count and by memory, least recently used first out, each loaded once.

`ModelCache` lives on the server's event loop. A hit is a dict lookup. A miss
loads the model in the cache's own thread (one load at a time, so warm models
keep being served by the loop meanwhile), and every request for that model
arriving during the load waits for the same load: a burst loads it once. A
load that fails is remembered with its reason and not tried again until
`retain` is called (the server calls it when the endpoints change); it never
evicts a model. After a successful load, the least recently used models are
evicted until the cache is within both limits again; the new model is never
the one evicted. Requests already holding an evicted model finish with it.

What a model's memory is measured as
------------------------------------
The growth of the C heap's bytes in use (glibc `mallinfo2`: `uordblks`, the
bytes of allocated chunks, plus `hblkhd`, the bytes of mmapped ones) across its
load, which includes its first prediction (a warm-up that builds its kernels,
see `TwinModels`), never less than the artifact's size on disk. The first load
of a runtime in a process imports it (TensorFlow: hundreds of MB of heap):
a load that imported modules is done again and the second one measured. Both runtimes
keep their weights, graphs and interpreter state on that heap (TensorFlow's
CPU allocator and LiteRT allocate with malloc); a model's Python objects,
tens of kB, are not counted. Loads run one at a time, so one load's growth is
its own, give or take what requests served meanwhile hold at the two instants.

Not the process's resident memory (RSS) around the load, which was measured
and is wrong twice: the first load of a runtime adds its one-time setup
(+28 MB RSS for the first Keras churn model, +1.7 MB for each next one, both
scored at one batch shape; the heap measure gives 6.4 and 1.2 MB), and once
models have been evicted, a load reuses
pages freed by them, so its RSS delta reads close to 0 and a memory limit
summed from such deltas would let the cache hold ever more models. The heap's
bytes in use go down when a model is freed and up when one is loaded,
whichever pages they use. Without glibc (macOS, musl) the RSS delta is the
fallback, with that caveat.

The limit applies to the models kept: while a model loads, the memory of one
more model is in use (no room is made before a load, so a load that fails
evicts nothing). The memory of the process as a whole is also reported
(`resident_bytes`, and `process_resident_memory_bytes` at /metrics): the
runtime itself is outside the limit (TensorFlow: ~600 MB; a worker serving
only LiteRT models never imports it and was measured at ~160 MB resident in
all, a churn model at ~0.17 MB).

What an evicted model leaves behind is outside the limit too. Keras models
hold reference cycles, freed by Python's cyclic collector, not at eviction (the
server freezes the runtime's objects at start, `gc.freeze`, so that those
collections scan only models and requests). And TensorFlow keeps every model's
kernels in its eager kernel cache for good: measured with the churn models,
evicting and loading Keras models over and over grows the process by ~0.5 MB
per load for good (~0.2 MB with one batch shape traced; the server traces
four, see `TwinModels._load_model`), and by up to ~3 MB per load until
Python's collector runs, while the cache's measured memory stays within its
limit. Clearing TensorFlow's kernel cache stops that
growth, but also drops the kernels every loaded model and the runtime share:
each loaded model's next request rebuilds them (~35 ms), and the next load
measures them as its own; it is not done. A server that evicts Keras models
all day grows by that much per load: LiteRT models (`Predictor.load` picks the
runtime) are the ones to serve a fleet that does not fit in the cache with.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetops.errors import FleetopsError, UserError

# The smallest --cache-memory accepted: below this not even a small model's artifact fits (a churn model
# served by LiteRT measures ~0.17 MB, its artifact on disk ~0.09 MB).
MIN_CACHE_BYTES = 100_000
# A model whose last load took less than this (a LiteRT flatbuffer: about 2 ms) is reloaded on the event
# loop: at a fleet's miss rates the thread hand-off and the GIL passing back and forth cost more than the
# load, and requests waiting on cold models queue behind them. A first load, and a slow one (Keras), runs
# in the cache's thread so warm models keep answering meanwhile.
INLINE_LOAD_SECONDS = 0.005
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


class ModelUnavailable(Exception):
    """A model that could not be loaded (or kept), with the reason; remembered until `retain`."""

    def __init__(self, key: Hashable, reason: str):
        super().__init__(reason)
        self.key = key
        self.reason = reason


class ModelTooLarge(ModelUnavailable):
    """A model whose measured memory alone is over the cache's memory limit."""

    def __init__(self, key: Hashable, size: int, limit: int):
        super().__init__(
            key,
            f"it takes {format_bytes(size)} of memory once loaded, more than the cache's whole limit "
            f"of {format_bytes(limit)} (--cache-memory)",
        )
        self.size = size
        self.limit = limit


@dataclass
class Entry:
    key: Hashable
    value: Any
    bytes: int
    load_seconds: float


class ModelCache:
    """An LRU cache of loaded models on one event loop; see the module docstring.

    `max_models` and `max_bytes` are the limits (None: no limit). `metrics` (a
    `fleetops.serving.metrics.ServingMetrics`) is told of loads, failures and evictions; hits and
    misses are the caller's to count (a load at start is neither).
    """

    def __init__(self, max_models: int | None = None, max_bytes: int | None = None, metrics: Any = None):
        if max_models is not None and max_models < 1:
            raise UserError(f"the cache must hold at least 1 model, got a limit of {max_models}")
        if max_bytes is not None and max_bytes < MIN_CACHE_BYTES:
            raise UserError(
                f"a cache memory limit of {format_bytes(max_bytes)} is smaller than any model; "
                f"give at least {format_bytes(MIN_CACHE_BYTES)}"
            )
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.bytes = 0
        self.failed: dict[Hashable, str] = {}
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._largest = 0  # the largest model measured so far
        self._loading: dict[Hashable, asyncio.Future[Entry]] = {}
        self._live: set[Hashable] | None = None
        self._one_load = asyncio.Lock()
        self._load_seconds: dict[Hashable, float] = {}  # each model's last load, to choose where it reloads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        if metrics is not None:
            metrics.watch_cache(self)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first."""
        return list(self._entries)

    def get(self, key: Hashable) -> Entry | None:
        """The cached entry (now the most recently used), or None: then `load` it."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def full(self) -> bool:
        """Whether loading one more model would evict one (by count, or by the largest model measured so far)."""
        if self.max_models is not None and len(self._entries) >= self.max_models:
            return True
        return self.max_bytes is not None and self.bytes + self._largest > self.max_bytes

    async def load(self, key: Hashable, loader: Callable[[], tuple[Any, int]]) -> Entry:
        """The entry for `key`, loading it with `loader` unless it is cached or being loaded.

        `loader` runs in the cache's thread and returns the loaded value and the fewest bytes
        it can take (its size on disk). Raises `ModelUnavailable` when it fails (now or before).
        """
        entry = self.get(key)
        if entry is not None:
            return entry
        if key in self.failed:
            raise ModelUnavailable(key, self.failed[key])
        future = self._loading.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)  # no "exception never retrieved" when every waiter has gone
            self._loading[key] = future
            asyncio.get_running_loop().create_task(self._load(key, loader, future))
        # shield: a request that is cancelled (its client gone) does not cancel the load the others wait for.
        return await asyncio.shield(future)

    def retain(self, keys: set[Hashable]) -> int:
        """Keep only models whose key is in `keys` (those deployed), and forget failed loads; returns evictions.

        Forgetting failures gives them another try after the endpoints change: a model redeployed,
        or its files restored, is served again.
        """
        self._live = set(keys)
        self.failed.clear()
        self._load_seconds = {k: v for k, v in self._load_seconds.items() if k in self._live}
        gone = [k for k in self._entries if k not in self._live]
        for key in gone:
            self._evict(key)
        return len(gone)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _load(self, key: Hashable, loader: Callable[[], tuple[Any, int]], future: asyncio.Future[Entry]) -> None:
        try:
            async with self._one_load:  # one load at a time: its heap growth is its own
                if self._load_seconds.get(key, INLINE_LOAD_SECONDS) < INLINE_LOAD_SECONDS:
                    value, size, seconds = _measured(loader)  # a quick reload: no thread hand-off
                else:
                    loop = asyncio.get_running_loop()
                    value, size, seconds = await loop.run_in_executor(self._executor, _measured, loader)
            self._load_seconds[key] = seconds
            entry = Entry(key, value, size, seconds)
            if self.metrics is not None:
                self.metrics.load_seconds.observe(seconds)
            if self.max_bytes is not None and size > self.max_bytes:
                raise ModelTooLarge(key, size, self.max_bytes)
            self._largest = max(self._largest, size)
            if self._live is None or key in self._live:  # undeployed while it loaded: serve the waiters only
                self._entries[key] = entry
                self.bytes += size
                self._make_room(keep=key)
            future.set_result(entry)
        except ModelUnavailable as exc:
            self._fail(key, exc, future)
        except Exception as exc:  # fleetops' own errors say what they are; others are named by their type
            reason = str(exc) if isinstance(exc, FleetopsError) else f"{type(exc).__name__}: {exc}"
            self._fail(key, ModelUnavailable(key, reason), future)
        finally:
            self._loading.pop(key, None)

    def _fail(self, key: Hashable, exc: ModelUnavailable, future: asyncio.Future[Entry]) -> None:
        self.failed[key] = exc.reason
        if self.metrics is not None:
            self.metrics.load_failures.inc()
        print(f"fleetops serve: cannot serve {_name(key)}: {exc.reason}", file=sys.stderr, flush=True)
        if not future.done():
            future.set_exception(exc)

    def _make_room(self, keep: Hashable) -> None:
        while len(self._entries) > 1 and (
            (self.max_models is not None and len(self._entries) > self.max_models)
            or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            oldest = next(iter(self._entries))
            if oldest == keep:  # only when it alone is over: cannot happen, ModelTooLarge refused it
                break
            self._evict(oldest)

    def _evict(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.bytes
        if self.metrics is not None:
            self.metrics.cache_evictions.inc()


def _measured(loader: Callable[[], tuple[Any, int]]) -> tuple[Any, int, float]:
    """Run `loader`; its value, the memory it took (see the module docstring) and the seconds it took.

    A load that imported modules has set its runtime up (TensorFlow's import alone is hundreds of
    MB of heap), which is no model's memory: it is loaded again and the second load measured.
    The seconds are both loads'.
    """
    started = time.perf_counter()
    modules = len(sys.modules)
    value, grown, floor = _grown(loader)
    if len(sys.modules) != modules:
        del value
        value, grown, floor = _grown(loader)
    return value, max(grown, floor), time.perf_counter() - started


def _grown(loader: Callable[[], tuple[Any, int]]) -> tuple[Any, int, int]:
    before = heap_in_use()
    rss_before = resident_bytes() if before is None else 0
    value, floor = loader()
    after = heap_in_use()
    grown = after - before if after is not None and before is not None else resident_bytes() - rss_before
    return value, grown, floor


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _name(key: Hashable) -> str:
    return "@".join(key) if isinstance(key, tuple) else str(key)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def heap_in_use() -> int | None:
    """Bytes of the C heap in use (glibc), or None where `mallinfo2` is not available."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


def resident_bytes() -> int:
    """This process's resident memory (RSS) now."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is what is available
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def directory_bytes(path: str | Path) -> int:
    """The size on disk of the files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def parse_size(text: str, what: str = "--cache-memory") -> int:
    """Bytes from '2GB', '512MiB', '1.5 GB' or '1000000' (decimal kB/MB/GB/TB, binary KiB/MiB/GiB/TiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UserError(f"{what} {text!r} is not a size: give a number and a unit, e.g. 2GB, 512MB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
