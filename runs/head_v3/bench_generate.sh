#!/usr/bin/env bash
# Issue 20, session 3: default Generate time in fp32 (benchmark JSON with the CPU's model and flags),
# the astronaut and two London portraits (1024x1024 neutral photos), machine otherwise idle.
set -uo pipefail
. .venv/bin/activate
O=runs/head_v3
python benchmarks/bench_generate.py --precision fp32 --repeats 3 > $O/bench_generate_fp32_astronaut.json
for p in 001 021; do
  python benchmarks/bench_generate.py --precision fp32 --repeats 3 --refine-steps 40 \
    --photo ../shared/data/london/neutral/${p}_03.jpg > $O/bench_generate_fp32_london_$p.json
done
# the likeness benchmark on ../shared/data/faces (61 photos, 13 people) + the astronaut + Grace Hopper,
# feed-forward and the default 40-step fit, dlib rank-1 at the photo's camera and +-30 degrees
python benchmarks/bench_likeness.py --out $O/likeness_faces.json > $O/likeness_faces.log 2>&1
