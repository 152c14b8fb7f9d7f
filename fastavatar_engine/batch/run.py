"""Running a batch: jobs not yet finished -> workers -> manifest, with progress and a summary.

:func:`run_batch` is ``fastavatar batch``. It reads INPUT (:mod:`.inputs`), skips what the
manifest already holds as finished (:mod:`.manifest`), runs the rest on one in-process worker
(``workers=1`` and no ``address``: no Ray needed) or on Ray actors (:mod:`.ray_runner`), appends
every result to the manifest as it arrives, shows a progress line (done / failed, photos per
minute, ETA) and writes ``OUT/batch_summary.json``. Ctrl-C stops it between records: the
manifest holds every finished photo and a re-run does the rest. A run removes the temporary files
(``OUT/.<name>.<hex>.tmp``) a killed run's atomic writes left behind, so one OUT_DIR is for one
run at a time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .inputs import collect_jobs
from .manifest import MANIFEST_NAME, ManifestWriter, finished, read_manifest


class Progress:
    """The batch's progress line on ``stream`` (done / failed of total, photos per minute, ETA),
    redrawn at most every ``interval`` seconds; ``stream=None`` prints nothing."""

    def __init__(self, total: int, stream=sys.stderr, interval: float = 0.5):
        self.total, self.stream, self.interval = total, stream, interval
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, record: dict) -> None:
        if record.get("status") == "done":
            self.done += 1
        else:
            self.failed += 1
        self.draw(force=self.done + self.failed == self.total)

    def rate_per_min(self) -> float:
        return 60.0 * (self.done + self.failed) / max(time.perf_counter() - self.t0, 1e-9)

    def draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.stream is None or (not force and now - self._last < self.interval):
            return
        self._last = now
        n = self.done + self.failed
        rate = self.rate_per_min()
        eta = (self.total - n) / rate * 60 if rate > 0 else float("nan")
        eta_s = "--" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta))
        width = 24
        bar = "#" * int(width * n / max(self.total, 1))
        self.stream.write(f"\rbatch [{bar:<{width}}] {n}/{self.total}  done {self.done}  failed {self.failed}  "
                          f"{rate:.1f} photos/min  ETA {eta_s} ")
        if n == self.total:
            self.stream.write("\n")
        self.stream.flush()


def run_batch(source, out_dir, workers: int = 1, address: str | None = None, fit: int | None = None,
              preview: bool = True, retries: int = 2, skip_failed: bool = False, weights=None, device: str | None = None,
              stream=sys.stderr, blend: bool = False, blender: str | None = None) -> dict:
    """Run the batch (module docstring); returns the summary dict (also written to
    ``OUT/batch_summary.json``): counts, ``failed`` [(name, error)], wall time and photos/hour.

    ``workers`` > 1 or an ``address`` needs Ray (the ``cluster`` extra). ``retries``: how many
    more times a photo whose worker died is tried on another worker. ``blend``: also a .blend
    per photo, by a warm Blender beside each worker (``blender``: its executable or bpy Python;
    :mod:`.blend`); a photo done earlier without one is done again. Raises
    :class:`~.inputs.BatchInputError` for an INPUT that names no photo, ``ValueError`` for bad
    options, ``ImportError`` when Ray is needed and missing."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    jobs = collect_jobs(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in (".*.tmp", ".*.tmp.blend"):  # what a killed run's atomic writes left (never renamed into place)
        for tmp in out.glob(pattern):
            tmp.unlink(missing_ok=True)
    prior = read_manifest(out / MANIFEST_NAME)
    need = ("blend",) if blend else ()
    todo = [j for j in jobs if not finished(prior.get(j.name), skip_failed, need)]
    progress = Progress(len(todo), stream)
    options = {"out_dir": str(out), "fit": fit, "preview": preview, "weights": weights, "device": device,
               "blend": bool(blend), "blender": blender}
    t0 = time.perf_counter()
    interrupted = False
    with ManifestWriter(out / MANIFEST_NAME) as writer:
        def record(rec: dict) -> None:
            writer.append(rec)
            progress.update(rec)

        try:
            if todo and workers == 1 and address is None:
                _run_local(todo, options, record)
            elif todo:
                from .ray_runner import run_on_ray

                run_on_ray(todo, options, record, workers, address, retries)
        except KeyboardInterrupt:
            interrupted = True
            if stream is not None:
                stream.write("\nbatch: interrupted; the manifest holds every finished photo, a re-run does the rest\n")
    wall = time.perf_counter() - t0
    final = read_manifest(out / MANIFEST_NAME)
    states = [final.get(j.name, {}).get("status", "pending") for j in jobs]
    failed = [(j.name, final[j.name].get("error", "")) for j, s in zip(jobs, states) if s == "failed"]
    ran = progress.done + progress.failed
    summary = {"input": str(source), "out_dir": str(out), "jobs": len(jobs), "skipped_finished": len(jobs) - len(todo),
               "ran": ran, "done": states.count("done"), "failed": len(failed), "pending": states.count("pending"),
               "interrupted": interrupted, "workers": workers, "address": address, "fit": fit, "blend": bool(blend),
               "wall_s": round(wall, 2), "photos_per_hour": round(3600.0 * ran / wall, 1) if ran and wall > 0 else None,
               "failures": failed}
    from ..ply import _atomic_write

    _atomic_write(out / "batch_summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1) + "\n"))
    return summary


def _run_local(todo, options: dict, record) -> None:
    """All of ``todo`` on one in-process worker, in order."""
    from .worker import PhotoWorker

    worker = PhotoWorker(**{k: v for k, v in options.items() if v is not None or k == "fit"})
    try:
        for job in todo:
            record(worker.process(job))
    finally:
        worker.close()
