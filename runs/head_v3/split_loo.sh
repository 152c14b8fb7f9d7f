#!/usr/bin/env bash
# Issue 20, session 3: the detail stage's split (3DGS densification) on and off, leave-one-out 369
# (model trained on 128 + 306), frontal photo (camera 8) in, default Generate (40-step fit), strict PSNR.
# The first two ran when the fit size was still 256 px (the default until the third line measured 192).
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --json $O/loo_369_fit40.json  # split off (then the default)
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --refine-option split=2000 --json $O/loo_369_fit40_split2000.json
# the fit's resolution (the head crop's longer side) at 192 px instead of 256 (time budget)
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --refine-option refine_size=192 --json $O/loo_369_fit40_size192.json
