#!/usr/bin/env bash
# Issue 20, session 3: does refining the photo's camera in the 40-step fit (camera=true) keep a
# training subject's novel views (default model v1, subject 306) and the held-out 369 (LOO model)?
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --json $O/train_306_fit40.json
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option camera=true --json $O/train_306_fit40_camera.json
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --refine-option camera=true --json $O/loo_369_fit40_camera.json
