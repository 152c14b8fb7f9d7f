#!/usr/bin/env bash
# Issue 20, session 3: the camera refined in the fit (camera=true) with and without the appearance
# transfer, on training subject 306 (default model v1) and held-out 369 (LOO model).
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
while pgrep -f "fit_ablation[.]sh" > /dev/null; do sleep 10; done
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option camera=true --refine-option transfer=false --json $O/train_306_fit40_camera_notransfer.json
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --refine-option camera=true --refine-option transfer=false --json $O/loo_369_fit40_camera_notransfer.json
