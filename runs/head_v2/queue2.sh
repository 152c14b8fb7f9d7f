#!/usr/bin/env bash
# Issue 20 measurements, second batch (after growth was limited to above the chin). From the repo root.
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v2
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --json $O/loo_369_fit40.json
python benchmarks/bench_likeness_london.py --out $O/likeness_london.json > $O/likeness_london.log 2>&1
