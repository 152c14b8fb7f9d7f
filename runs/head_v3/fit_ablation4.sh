#!/usr/bin/env bash
# Issue 20, session 3: growth only into uncovered parts at least 3% of the fit image thick (no rim),
# with the camera refined (camera=true): training subject 306 (default v1) and held-out 369 (LOO model).
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option camera=true --json $O/train_306_fit40_camera_thick.json
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --refine-option camera=true --json $O/loo_369_fit40_camera_thick.json
