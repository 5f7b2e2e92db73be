"""Visits of hot short links, which HAProxy answers from its redirects map with no Python in the
path: HAProxy counts them per ``host/slug`` in the ``hot_visits`` stick table and the agent
turns those cumulative counters into deltas it reports to the control service.

The counters live in one HAProxy worker and restart from zero when a reload or restart starts
a new one, so a delta is taken against the same worker only (its PID), and the baseline is
kept in a file so a restarted agent does not count the same visits twice.
"""
from __future__ import annotations

import collections
import json
import logging
import uuid
from pathlib import Path

from edge.runtime import RuntimeAPI
from kit.files import PUBLIC, write_atomic

log = logging.getLogger(__name__)
TABLE = "hot_visits"
COUNTER = "http_req_cnt"


class HotVisitMeter:
    def __init__(self, runtime: RuntimeAPI, state_file: Path) -> None:
        self._runtime = runtime
        self._file = state_file
        self._pid: int | None = None
        self._seen: dict[str, int] = {}
        self.pending: collections.Counter[str] = collections.Counter()
        self.sealed: tuple[str, dict[str, int]] | None = None
        """A report sent but not confirmed: resent as it is, under the same id, until it is."""
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self._file.read_text())
            self._pid, self._seen = doc["pid"], dict(doc["seen"])
            self.pending.update(doc["pending"])
            if doc.get("sealed"):
                self.sealed = (str(doc["sealed"][0]), dict(doc["sealed"][1]))
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._file, exc)

    def _save(self) -> None:
        write_atomic(self._file, json.dumps({"pid": self._pid, "seen": self._seen,
                                             "pending": dict(self.pending),
                                             "sealed": self.sealed}), PUBLIC)

    def read(self) -> dict[str, int]:
        """Visits since the last read, added to ``pending``; returns all pending visits."""
        pid = self._runtime.worker_pid()
        counts = self._runtime.show_table(TABLE, COUNTER)
        if self._runtime.worker_pid() != pid:
            return dict(self.pending)  # reloaded while reading: the next round reads one worker
        seen = self._seen if pid == self._pid else {}
        for key, count in counts.items():
            before = seen.get(key, 0)
            # Lower than before: the entry expired and started again from zero.
            delta = count - before if count >= before else count
            if delta > 0:
                self.pending[key] += delta
        if (pid, counts) != (self._pid, self._seen):  # an idle node writes nothing
            self._pid, self._seen = pid, counts
            self._save()
        return dict(self.pending)

    def next_report(self, limit: int) -> tuple[str, dict[str, int]] | None:
        """The report to send now: the unconfirmed one, else up to ``limit`` pending keys."""
        if self.sealed is None and self.pending:
            keys = sorted(self.pending)[:limit]
            self.sealed = (uuid.uuid4().hex, {key: self.pending.pop(key) for key in keys})
            self._save()
        return self.sealed

    def delivered(self, report_id: str) -> None:
        """The control service has counted report ``report_id``."""
        if self.sealed is not None and self.sealed[0] == report_id:
            self.sealed = None
            self._save()

    def unreported(self) -> dict[str, int]:
        """Visits not yet confirmed by the control service, sent or not."""
        total = collections.Counter(self.pending)
        total.update(self.sealed[1] if self.sealed else {})
        return dict(total)
