"""A batch's INPUT -> its jobs: one per photo entry, each with a unique output name.

INPUT is a folder (its images, sorted by name, not recursive), a glob pattern
(``"shots/**/*.jpg"``, sorted), or a list file: ``.txt`` (one path per line; blank lines and
``#`` comments skipped) or ``.csv`` (the ``photo`` column, else the first). Relative paths in a
list are relative to the list's folder. A list may name a photo more than once (a crowd from a
few faces): every entry is its own job. Entries are not opened here: a missing or unreadable
photo becomes a failed job when a worker reaches it, so one bad line does not stop the run.

Output names are the photo's stem, made filesystem-safe, with ``_2``, ``_3`` ... for repeats in
list order, so the same INPUT always gives the same names (what a re-run resumes by).
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Entries beyond this are refused (a list file that is not a list of photos).
MAX_JOBS = 10_000_000


class BatchInputError(ValueError):
    """INPUT names nothing usable (the message says what and why)."""


@dataclass(frozen=True)
class Job:
    """One photo to process: ``name`` (unique in the batch: the output files' stem), ``photo``
    (the path as given, resolved against a list's folder)."""

    name: str
    photo: str


def collect_jobs(source) -> list[Job]:
    """The jobs of INPUT ``source`` (module docstring). Raises :class:`BatchInputError` when it
    names no photo, is an unreadable list, or lists more than :data:`MAX_JOBS` entries."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        photos = [str(p) for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        where = f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
    elif path.is_file() and path.suffix.lower() in (".txt", ".csv", ".lst"):
        photos = _read_list(path)
        where = f"{path}: the list names no photo"
    elif path.is_file():
        photos, where = [text], ""
    elif any(c in text for c in "*?["):
        photos = sorted(glob.glob(text, recursive=True))
        photos = [p for p in photos if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        where = f"{text}: the pattern matches no image"
    else:
        raise BatchInputError(f"{text}: no such folder, list file, photo or glob pattern")
    if not photos:
        raise BatchInputError(where)
    if len(photos) > MAX_JOBS:
        raise BatchInputError(f"{text}: {len(photos)} entries, more than {MAX_JOBS}")
    return _named(photos)


def _read_list(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"{path}: cannot read the list ({exc})") from exc
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(raw.splitlines()) if r and any(c.strip() for c in r)]
        col = 0
        if rows and "photo" in [c.strip().lower() for c in rows[0]]:
            col = [c.strip().lower() for c in rows[0]].index("photo")
            rows = rows[1:]
        entries = [r[col].strip() if col < len(r) else "" for r in rows]
    else:
        entries = [line.strip() for line in raw.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    return [e if Path(e).is_absolute() else str(path.parent / e) for e in entries]


def _named(photos: list[str]) -> list[Job]:
    count: dict[str, int] = {}
    used: set[str] = set()
    jobs = []
    for p in photos:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(p).stem).strip("._") or "photo"
        name = stem
        while name in used:  # a repeat (or a photo already called stem_2)
            count[stem] = count.get(stem, 1) + 1
            name = f"{stem}_{count[stem]}"
        used.add(name)
        jobs.append(Job(name, p))
    return jobs
