"""Peak resident memory of a block of code, for the benchmark scripts: a thread samples this
process's RSS (/proc/self/statm) every few milliseconds; the peak minus the RSS at entry is what
the block added. ru_maxrss cannot say this: it is a high-water mark of the whole process."""

import os
import threading
import time
from contextlib import contextmanager

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@contextmanager
def peak_memory(interval: float = 0.002):
    """``with peak_memory() as peak: ...``; afterwards ``peak["mib"]`` is the block's peak RSS
    growth in MiB (allocations shorter than ``interval`` can be missed)."""
    start, result, done = rss_bytes(), {"mib": 0.0}, threading.Event()

    def sample():
        top = start
        while not done.is_set():
            top = max(top, rss_bytes())
            time.sleep(interval)
        result["mib"] = (max(top, rss_bytes()) - start) / 2**20

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
