#!/usr/bin/env bash
# Product-path evaluation of the leave-one-subject-out model (trained on 128 + 306) on subject 369:
# frontal photo (camera 8) in, the 15 other calibrated views scored, 300 refinement steps.
# Run from the repository root (engine installed, ../shared beside it). Outputs: runs/product_v1/.
set -euo pipefail
D=../shared/data/nersemble_samples
E="fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 300 --weights runs/loo_369/model"
O=runs/product_v1
$E --json $O/loo_369_default.json                                   # the defaults: what a user gets
$E --refine-option camera=false --refine-option detail_steps=0 --json $O/loo_369_no_detail.json
# each constraint on its own, on top of the bare product path (segmentation mask + body cut, PnP camera)
BASE="--refine-option symmetry=false --refine-option landmark_weight=0 --refine-option camera=false \
      --refine-option silhouette_weight=0 --refine-option prior_weight=0 --refine-option detail_steps=0"
$E $BASE --json $O/loo_369_abl_min.json
$E $BASE --refine-option camera=true --json $O/loo_369_abl_cam.json
$E $BASE --refine-option symmetry=true --json $O/loo_369_abl_sym.json
$E $BASE --refine-option landmark_weight=1 --json $O/loo_369_abl_lmk.json
$E $BASE --refine-option silhouette_weight=0.3 --json $O/loo_369_abl_sil.json
$E $BASE --refine-option prior_weight=0.1 --json $O/loo_369_abl_prior.json
