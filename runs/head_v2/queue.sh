#!/usr/bin/env bash
# Measurements for issue 20, run one after another (2-core CPU). From the repository root.
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v2
# growth off, to see what the grown Gaussians do to novel views
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --refine-option grow=0 --json $O/loo_369_fit40_grow0.json
