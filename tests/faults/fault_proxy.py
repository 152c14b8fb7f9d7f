"""A faulty engine for tests: runs the real engine as a child and relays frames both ways,
injecting one fault when a chosen request comes through.

    python fault_proxy.py -m fastavatar_engine serve [engine args...]      (FASTAVATAR_FAULT=stage:action)

``stage`` is a request type (generate, decode, refine); ``action``:

* ``kill``    — the engine dies (SIGKILL, child and proxy) when the request arrives, or for
  ``refine`` after its first progress event (mid-request);
* ``hang``    — the engine stops answering (still alive, silent) from that point;
* ``garbage`` — the engine writes random bytes instead of its answer, then dies.

A fault trips once: with FASTAVATAR_FAULT_ONCE=PATH the proxy creates PATH when it trips and
stays transparent while PATH exists, so the engine the client starts next is healthy (the
recovery under test). Without FASTAVATAR_FAULT it is a transparent relay. Used through a one-line wrapper script set as
the engine interpreter (tests/blender/driver.py, scenario "faults").
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fastavatar_engine.protocol import FrameReader, StreamClosed, encode_frame  # noqa: E402


def main() -> int:
    stage, _, action = os.environ.get("FASTAVATAR_FAULT", "").partition(":")
    once = os.environ.get("FASTAVATAR_FAULT_ONCE")
    if once and Path(once).exists():
        stage = action = ""
    child = subprocess.Popen([sys.executable, *sys.argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = sys.stdout.buffer
    lock = threading.Lock()
    state = {"target": None, "tripped": False}

    def die():
        child.kill()
        os.kill(os.getpid(), signal.SIGKILL)

    def trip():
        state["tripped"] = True
        if once:
            Path(once).touch()
        if action == "kill":
            die()
        elif action == "garbage":
            with lock:
                out.write(os.urandom(4096))
                out.flush()
            time.sleep(0.2)
            die()
        elif action == "hang":
            while True:  # alive and silent
                time.sleep(3600)

    def from_engine():
        reader = FrameReader(child.stdout)
        while True:
            try:
                msg = reader.next()
            except StreamClosed:
                os._exit(0)
            if state["target"] is not None and msg.id == state["target"] and stage == "refine" \
                    and msg.type == "progress" and not state["tripped"]:
                trip()
            if state["tripped"] and action == "hang":
                continue
            arrays = dict(msg.arrays)
            header = {k: v for k, v in msg.header.items() if k != "arrays"}
            with lock:
                out.write(encode_frame(header, arrays))
                out.flush()

    threading.Thread(target=from_engine, daemon=True).start()
    reader = FrameReader(sys.stdin.buffer)
    while True:
        try:
            msg = reader.next()
        except StreamClosed:
            child.stdin.close()
            child.wait()
            return 0
        if msg.type == stage and not state["tripped"]:
            state["target"] = msg.id
            if stage != "refine":
                trip()
        header = {k: v for k, v in msg.header.items() if k != "arrays"}
        child.stdin.write(encode_frame(header, dict(msg.arrays)))
        child.stdin.flush()


if __name__ == "__main__":
    sys.exit(main())
