"""The batch manifest: one JSON object per line, appended as results arrive (JSON Lines).

Each record: ``name`` (the job's output stem), ``photo``, ``status`` ("done" or "failed"),
``outputs`` {kind: path}, ``seconds`` {stage: seconds}, ``error`` (failed: "ErrorType: message"),
``attempt`` (1 for the first try; more after a worker died), ``worker`` and ``time`` (UTC, ISO
8601). A line is written with one ``write`` and flushed and fsynced before the next, so a run
killed at any point leaves at most one truncated last line, which :func:`read_manifest` skips.

Resuming: the last record of a name wins; a name whose last record is "done" and whose outputs
all exist is finished and a re-run skips it. A photo that failed is tried again by a re-run
(its cause may have been fixed), unless ``--skip-failed``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MANIFEST_NAME = "manifest.jsonl"


def read_manifest(path) -> dict[str, dict]:
    """{name: its last record} from the manifest at ``path`` ({} when it does not exist).
    Lines that are not a JSON object with a string ``name`` (a line cut short by a kill) are
    skipped."""
    path = Path(path)
    if not path.is_file():
        return {}
    last: dict[str, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("name"), str):
                last[rec["name"]] = rec
    return last


def finished(record: dict | None, skip_failed: bool = False, need=()) -> bool:
    """Whether a job with this last ``record`` needs no more work: done with every output file
    present, including the kinds in ``need`` (e.g. "blend" for a run with ``--blend`` after one
    without), or failed, with ``skip_failed``."""
    if not record:
        return False
    if record.get("status") == "failed":
        return skip_failed
    outputs = record.get("outputs") or {}
    return (record.get("status") == "done" and all(k in outputs for k in need)
            and all(Path(p).is_file() for p in outputs.values()))


class ManifestWriter:
    """Appends records to the manifest at ``path`` (created with its folder when missing). A
    partial last line left by an earlier kill is ended first, so the next record starts on its
    own line."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        if self._fh.tell() > 0:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write(b"\n")

    def append(self, record: dict) -> None:
        """Write ``record`` (a JSON-serialisable dict with ``name``) as one line, durably."""
        rec = dict(record)
        rec.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
