#!/usr/bin/env bash
# Product-path evaluation of the leave-one-subject-out model (trained on 128 + 306) on subject 369:
# frontal photo (camera 8) in, the 15 other calibrated views scored (strict: the subject's head
# frame; frame_aligned: moved into the landmark template's frame), 300 refinement steps, the
# oracle beside it. Run from the repository root (engine installed, ../shared beside it).
set -euo pipefail
D=../shared/data/nersemble_samples
E="fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 300 --weights runs/loo_369/model"
O=runs/product_v1
$E --oracle --json $O/loo_369_default.json                          # the defaults: what a user gets
# each default constraint switched off on its own
for opt in symmetry=false landmark_weight=0 silhouette_weight=0 prior_weight=0 detail_steps=0 transfer=false; do
  $E --refine-option $opt --json $O/loo_369_off_${opt%%=*}.json
done
$E --refine-option camera=true --json $O/loo_369_on_camera.json     # photometric camera refinement on
