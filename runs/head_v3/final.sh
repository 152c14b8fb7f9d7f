#!/usr/bin/env bash
# Issue 20, session 3, with this session's defaults (fit at 192 px, camera refined, no growth into a
# thin rim): default Generate time in fp32 (idle machine), training subject 128's held-out views,
# the first 24 London people against their unseen smiling photos, and the faces/astronaut/Hopper
# likeness benchmark (one photo per person). Run from the repository root.
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
python benchmarks/bench_generate.py --precision fp32 --repeats 3 --refine-steps 40 > $O/bench_generate_fp32_astronaut_final.json
python benchmarks/bench_generate.py --precision fp32 --repeats 3 --refine-steps 40 \
  --photo ../shared/data/london/neutral/001_03.jpg > $O/bench_generate_fp32_london_001_final.json
fastavatar evaluate --data $D --subject 128 --input-view 8 --refine 40 --json $O/train_128_fit40.json
python benchmarks/bench_likeness_london.py --limit 24 --out $O/likeness_london24.json > $O/likeness_london24.log 2>&1
python benchmarks/bench_likeness.py --per-person 1 --out $O/likeness_faces.json > $O/likeness_faces.log 2>&1
# then all 102 London people (resumes from the first 24's rows, copied to likeness_london.jsonl)
python benchmarks/bench_likeness_london.py --out $O/likeness_london.json > $O/likeness_london.log 2>&1
