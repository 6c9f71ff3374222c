"""
The worker pool's metrics files (prometheus-client's multiprocess mode):
every worker's, summed on each scrape; a dead worker's folded into one
file; the directories of pools whose parent was killed removed.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

METRICS_DIR_PREFIX = "agw-metrics-"  # then the parent's pid
# File types whose samples add up across processes (live gauges are dropped
# by mark_process_dead; other gauge modes keep their pid and are left).
_ADDITIVE = ("counter", "histogram", "summary")


def remove_stale_metrics_dirs(directory: str | None = None) -> list[str]:
    """
    Remove the metrics directories of pools whose parent is gone (killed,
    so it could not clean up); return them.
    """
    directory = directory or tempfile.gettempdir()
    removed = []
    for name in os.listdir(directory):
        pid_text = name[len(METRICS_DIR_PREFIX):].partition("-")[0]
        if not name.startswith(METRICS_DIR_PREFIX) or not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
        except PermissionError:
            pass  # alive, someone else's
    return removed


def fold_dead_worker_metrics(pid: int, directory: str) -> None:
    """
    Add a dead worker's counters and histograms into the C{*_dead.db}
    files and delete its own: its counts stay in every sum, and restarts do
    not grow the directory (nor the time each scrape takes) without bound.
    """
    mark_process_dead(pid, directory)
    for typ in _ADDITIVE:
        path = os.path.join(directory, f"{typ}_{pid}.db")
        if not os.path.exists(path):
            continue
        dead = MmapedDict(os.path.join(directory, f"{typ}_dead.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                total, _ = dead.read_value(key)
                dead.write_value(key, total + value, timestamp)
        finally:
            dead.close()
        os.remove(path)


class WorkerMetrics:
    """Collector: every worker's metrics, summed (their files in the pool's directory)."""

    def __init__(self, directory: Callable[[], str | None]) -> None:
        self._directory = directory

    def collect(self) -> Any:
        directory = self._directory()
        if directory is not None:
            files = [path for path in glob.glob(os.path.join(directory, "*.db")) if _readable(path)]
            yield from MultiProcessCollector.merge(files, accumulate=True)


def _readable(path: str) -> bool:
    """
    Whether the metrics file at C{path} can be read whole. A worker creates
    its files empty and sizes them a moment later (prometheus-client's
    C{MmapedDict}): a scrape in between must not fail (it answered 500), and
    an empty file holds no counts yet, so skipping it loses nothing. A file
    cut short (never written by a live worker) is skipped too rather than
    failing every scrape from then on.
    """
    try:
        for _ in MmapedDict.read_all_values_from_file(path):
            pass
    except (OSError, struct.error, RuntimeError, UnicodeDecodeError):
        return False
    return True
