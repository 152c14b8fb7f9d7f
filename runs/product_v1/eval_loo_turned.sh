#!/usr/bin/env bash
# Symmetry on a turned photo: the leave-one-out model on subject 369 from camera 2 (yaw 33 degrees),
# 300 steps, defaults with and without the mirrored view. Run from the repository root.
set -euo pipefail
D=../shared/data/nersemble_samples
E="fastavatar evaluate --data $D --subject 369 --input-view 2 --refine 300 --weights runs/loo_369/model"
$E --json runs/product_v1/loo_369_view2_default.json
$E --refine-option symmetry=false --json runs/product_v1/loo_369_view2_off_symmetry.json
