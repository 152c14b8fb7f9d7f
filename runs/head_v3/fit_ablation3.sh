#!/usr/bin/env bash
# Issue 20, session 3: with the camera refined (camera=true), the detail stage's parts on training
# subject 306 (default model v1): no growth; means fixed in the detail stage.
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
while pgrep -f "fit_ablation2[.]sh" > /dev/null; do sleep 10; done
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option camera=true --refine-option grow=0 --json $O/train_306_fit40_camera_grow0.json
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option camera=true --refine-option lr_detail_means=0 --json $O/train_306_fit40_camera_means0.json
