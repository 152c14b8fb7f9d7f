"""Batch workers as Ray actors (Ray Core, Apache-2.0), on this machine or a cluster.

Each worker is an actor holding one :class:`~.worker.PhotoWorker` (the model loaded once and kept
warm); the driver keeps one job in flight per actor, so a photo is on exactly one worker at a
time, and appends each result to the manifest as it arrives. An actor that dies (killed, out of
memory, its node lost) fails its in-flight call with Ray's ``RayActorError``: the photo goes back
to the front of the queue on a fresh actor, up to ``retries`` more times, and is then recorded as
failed with the reason. A photo's own failure (no face, unreadable) is a record from the worker,
never retried.

Resources: an actor asks for one GPU when the cluster has GPUs (and decodes on ``cuda``), else
for ``max(1, cluster CPUs // workers)`` CPUs. Without ``address`` a local Ray is started for the
run (and stopped after); with one (``ray start --head`` printed it, e.g. ``192.168.1.10:6379``,
or ``auto``) the run joins that cluster. Ray 2.60's ``ray start --head`` turns token
authentication on and writes ``~/.ray/auth_token``; a driver needs ``RAY_AUTH_MODE=token`` to
send it, so when that file exists and the variable is unset the run sets it (:func:`_auth_mode`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict

#: Object store of a local Ray started for a run (bytes): results are small records.
LOCAL_OBJECT_STORE = 100 << 20


def run_on_ray(todo, options: dict, record, workers: int, address: str | None, retries: int) -> None:
    """Run ``todo`` (jobs) on ``workers`` actors; ``record(rec)`` for each final record.
    Raises ``ImportError`` without Ray, ``RuntimeError`` when no worker can start the engine."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("more than one worker or --address needs Ray: pip install -e \".[cluster]\"") from exc
    from ray.exceptions import RayActorError

    from .worker import PhotoWorker

    own = not ray.is_initialized()
    if own:
        if address is None:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=False,
                     configure_logging=False)
        else:
            _auth_mode()
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        opts = dict(options)
        if gpus:
            opts["device"] = opts.get("device") or "cuda"
            actor_cls = ray.remote(num_gpus=1, num_cpus=1)(PhotoWorker)
        else:
            actor_cls = ray.remote(num_cpus=max(1, int(res.get("CPU", 1)) // workers))(PhotoWorker)
        kwargs = {k: v for k, v in opts.items() if v is not None or k == "fit"}

        def start():
            return actor_cls.remote(**kwargs)

        actors = [start() for _ in range(workers)]
        try:
            ray.get([a.pid.remote() for a in actors])  # the engine starts, or the run stops here
        except RayActorError as exc:
            raise RuntimeError(f"the batch workers could not start the engine: {exc}") from exc
        _dispatch(ray, todo, actors, start, record, retries)
    finally:
        if own:
            ray.shutdown()


def _auth_mode(home=None) -> bool:
    """Set ``RAY_AUTH_MODE=token`` for joining a cluster when ``~/.ray/auth_token`` exists (``home``:
    another home folder) and the variable is unset; returns whether it was set here."""
    import os
    from pathlib import Path

    if "RAY_AUTH_MODE" in os.environ or not (Path(home or Path.home()) / ".ray" / "auth_token").is_file():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    return True


def _dispatch(ray, todo, actors: list, start, record, retries: int) -> None:
    """One job in flight per actor until ``todo`` is empty (module docstring)."""
    from ray.exceptions import RayActorError

    queue = deque((job, 1) for job in todo)
    idle = list(range(len(actors)))
    inflight: dict = {}
    try:
        while queue or inflight:
            while queue and idle:
                i = idle.pop()
                job, attempt = queue.popleft()
                inflight[actors[i].process.remote(asdict(job), attempt)] = (i, job, attempt)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                i, job, attempt = inflight.pop(ref)
                try:
                    rec = ray.get(ref)
                except RayActorError as exc:  # the worker died with the photo: a fresh one, and again
                    actors[i] = start()
                    idle.append(i)
                    if attempt <= retries:
                        queue.appendleft((job, attempt + 1))
                        continue
                    rec = {"name": job.name, "photo": job.photo, "attempt": attempt, "status": "failed",
                           "error": f"WorkerDied: its worker died on all {attempt} attempts ({type(exc).__name__})"}
                record(rec)
                idle.append(i)
    finally:
        for a in actors:
            ray.kill(a)
