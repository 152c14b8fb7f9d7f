"""What machine a benchmark figure comes from: the CPU model and the instruction-set flags that
change our timings (AVX-512, AVX512-BF16 / AMX: the refinement's bf16 path), threads and versions."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """e.g. ``'Intel(R) Xeon(R) Processor; avx512f=True, avx512_bf16=True, amx=False; 2 CPU threads'``."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("", platform.processor() or platform.machine()):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    fl = set(flags)
    return (f"{name}; avx512f={'avx512f' in fl}, avx512_bf16={'avx512_bf16' in fl}, amx={'amx_tile' in fl}; "
            f"{os.cpu_count()} CPU threads")


def emit(result: dict, out=None) -> None:
    """Print a benchmark's JSON ``result`` and, with ``out``, write it there too (folders created)."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
