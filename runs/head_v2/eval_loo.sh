#!/usr/bin/env bash
# Product-path evaluation with the head model (issue 20): the leave-one-subject-out model (trained
# on 128 + 306) on subject 369, frontal photo (camera 8) in, the 15 other calibrated views scored
# (strict and frame-aligned). Default Generate (the 40-step likeness fit) and --refine 300 with the
# oracle beside it. Run from the repository root (engine installed, ../shared beside it).
set -euo pipefail
D=../shared/data/nersemble_samples
O=runs/head_v2
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --json $O/loo_369_fit40.json
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 300 --oracle --weights runs/loo_369/model --json $O/loo_369_refine300.json
