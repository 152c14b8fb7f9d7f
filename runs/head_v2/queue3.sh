#!/usr/bin/env bash
# Issue 20, session 2 (after the head crop and the mask-outline term of the head fit), from the repo
# root: the camera on the 48 sample views, leave-one-out 369 with default Generate, and the
# training subjects' held-out views (default model v1, default Generate beside feed-forward).
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v2
while pgrep -f "bench_likeness_london[.]py" > /dev/null; do sleep 20; done  # one heavy job at a time
python tools/head_fit_accuracy.py --out $O/camera_accuracy.json > $O/camera_accuracy.log 2>&1
python tools/head_fit_accuracy.py --no-silhouette --out $O/camera_accuracy_landmarks_only.json > /dev/null 2>&1
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 40 --weights runs/loo_369/model --json $O/loo_369_fit40.json
for s in 128 306; do
  fastavatar evaluate --data $D --subject $s --input-view 8 --refine 40 --json $O/train_${s}_fit40.json
done
