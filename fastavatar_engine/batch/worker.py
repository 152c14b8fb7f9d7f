"""One warm engine that turns batch jobs into avatars: what each batch worker (in process or a
Ray actor) runs.

:class:`PhotoWorker` loads the generator once (front-end, identity backbone, model) and then, per
job, reads the photo, generates (feed-forward), runs the likeness fit (``fit`` steps, the
default of ``fastavatar generate``), and writes ``OUT/<name>.ply``, its ``.fastavatar.json``
sidecar and ``OUT/<name>.png`` (the preview strip of ``fastavatar generate --preview``), and with
``blend`` ``OUT/<name>.blend`` made by a warm Blender beside it (:mod:`.blend`), each atomically
(written under a temporary name, then renamed). It never raises for a bad photo: the
record it returns says what failed and why. A record names its worker (``host:pid``) and, on
Ray, its node.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from .inputs import Job


class PhotoWorker:
    """A warm engine for batch jobs.

    Args:
        out_dir: where outputs go (created).
        fit: likeness-fit steps per photo (0: the bare feed-forward avatar; None: the default).
        preview: also write the preview strip PNG.
        blend: also write a .blend per photo (:class:`~.blend.BlendStage`); ``blender`` the
            Blender executable or bpy Python for it (None: this Python's bpy).
        weights, device, embedder: as ``fastavatar generate``'s options.
    Raises what :class:`~fastavatar_engine.generate.AvatarGenerator` raises when the engine
    cannot start (missing weights or extras), and :class:`~.blend.BlendError` for ``blend``
    without Blender: that is a run's error, not a photo's.
    """

    def __init__(self, out_dir, fit: int | None = None, preview: bool = True, weights=None, device: str = "cpu",
                 embedder=None, blend: bool = False, blender: str | None = None):
        from ..generate import DEFAULT_FIT_STEPS, AvatarGenerator

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fit = DEFAULT_FIT_STEPS if fit is None else int(fit)
        if self.fit < 0:
            raise ValueError(f"fit steps must be >= 0, got {self.fit}")
        self.preview = bool(preview)
        self.blend = None
        if blend:
            from .blend import BlendStage

            self.blend = BlendStage(blender)  # checks for Blender before the engine loads
        t = time.perf_counter()
        self.gen = AvatarGenerator(weights, device=device, embedder=embedder)
        self.startup_s = time.perf_counter() - t
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.node = _ray_node()

    def pid(self) -> int:
        """This worker's process id (the batch's tests kill it)."""
        return os.getpid()

    def process(self, job: Job | dict, attempt: int = 1) -> dict:
        """The manifest record (:mod:`.manifest`) of ``job`` after running it: status "done" with
        its outputs and timings, or "failed" with the error."""
        from ..generate import preview_strip, save_avatar
        from ..images import load_image, save_png

        job = job if isinstance(job, Job) else Job(**job)
        rec = {"name": job.name, "photo": job.photo, "attempt": attempt, "worker": self.id}
        if self.node:
            rec["node"] = self.node
        seconds: dict[str, float] = {}
        t0 = t = time.perf_counter()
        try:
            image = load_image(job.photo)
            seconds["read"] = time.perf_counter() - t
            t = time.perf_counter()
            avatar = self.gen.generate(image)
            avatar.photo = job.photo
            seconds["generate"] = time.perf_counter() - t
            if self.fit:
                t = time.perf_counter()
                self.gen.refine(avatar, image, self.fit)
                seconds["fit"] = time.perf_counter() - t
            t = time.perf_counter()
            ply, meta = save_avatar(avatar, self.out_dir / f"{job.name}.ply")
            outputs = {"ply": str(ply), "metadata": str(meta)}
            if self.preview:
                outputs["preview"] = str(save_png(self.out_dir / f"{job.name}.png", preview_strip(avatar, image)))
            seconds["write"] = time.perf_counter() - t
            if self.blend is not None:
                t = time.perf_counter()
                outputs["blend"] = str(self.blend.write(self.gen.model, avatar, self.out_dir / f"{job.name}.blend",
                                                        label=job.photo))
                seconds["blend"] = time.perf_counter() - t
            rec.update(status="done", outputs=outputs, gaussians=len(avatar.gaussians))
        except Exception as exc:  # a photo's failure is a record, never the run's end
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        seconds["total"] = time.perf_counter() - t0
        rec["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        return rec

    def close(self) -> None:
        self.gen.close()
        if self.blend is not None:
            self.blend.close()


def _ray_node() -> str | None:
    """The Ray node id this worker runs on (as an actor), else None."""
    import sys

    ray = sys.modules.get("ray")  # only when Ray started this process: never imported here otherwise
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()
