#!/usr/bin/env bash
# Issue 20, session 2: the London likeness benchmark resumed for the people the first session did
# not reach (rows record their commit). From the repo root.
set -uo pipefail
. .venv/bin/activate
python benchmarks/bench_likeness_london.py --out runs/head_v2/likeness_london.json > runs/head_v2/likeness_london_rest.log 2>&1
