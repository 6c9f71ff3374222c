"""
Charges a process could not write before it stopped (the ledger was
unreachable), kept on disk (L{ChargeSpool}) and written by the next process
that starts on the same ledger. A charge keeps its id: a file replayed
twice, or by two workers at once, adds each charge once.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from agw.metering._ledger import BudgetLedger, Charge


def ledger_identity(url: str) -> str:
    """A short name for the ledger at C{url} (files of one ledger are never replayed into another)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


class ChargeSpool:
    """Spool files in C{directory} for the ledger named C{identity}: C{charges-<identity>-<uuid>.jsonl}."""

    log = Logger()

    def __init__(self, directory: str, identity: str) -> None:
        self.directory = directory
        self._prefix = f"charges-{identity}-"

    def keep(self, charges: Iterable[Charge]) -> str | None:
        """Write C{charges} to a new file (whole or not at all); its path, or C{None} if there were none."""
        lines = [
            json.dumps({"id": c.id, "consumer": c.key[0], "budget": c.key[1], "window_start": c.key[2], "amount": c.amount})
            for c in charges
        ]
        if not lines:
            return None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, f"{self._prefix}{uuid.uuid4().hex}.jsonl")
        partial = path + ".partial"
        with open(partial, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        return path

    def files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(glob.escape(self.directory), f"{self._prefix}*.jsonl")))

    @inlineCallbacks
    def replay(self, ledger: BudgetLedger, now: int) -> Any:
        """Write every kept file's charges to C{ledger}, then remove the file; fires with how many were written."""
        written = 0
        for path in self.files():
            try:
                charges = _read(path)
            except (OSError, ValueError, KeyError, TypeError) as e:
                self.log.error("budget charges kept in {path} cannot be read ({error}): left for the operator", path=path, error=e)
                os.replace(path, path + ".unreadable")
                continue
            yield ledger.write(charges, now)  # fails (and the file stays) while the ledger is unreachable
            written += len(charges)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass  # another worker replayed it too (each charge counted once, by its id)
            self.log.info("{count} budget charges kept by a stopped process written from {path}", count=len(charges), path=path)
        return written


def _read(path: str) -> list[Charge]:
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [
        Charge(str(r["id"]), (str(r["consumer"]), str(r["budget"]), int(r["window_start"])), int(r["amount"]))
        for r in records
    ]
