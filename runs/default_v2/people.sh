#!/usr/bin/env bash
# Stage a' of default v2: the likeness fit of every training person of ../shared/data/london and
# ../shared/data/faces (the held-out people of fastavatar_engine/train/split_v2.json excluded), made
# with the leave-369-out model so that no fit has seen subject 369. Resumable: finished entries are
# skipped. 2-core CPU, ~12 s per single-photo entry.
set -euo pipefail
fastavatar train people --data ../shared/data --out runs/default_v2 --weights runs/loo_369/model
