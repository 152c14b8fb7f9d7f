#!/usr/bin/env bash
# Issue 20, session 3: which part of the default 40-step fit costs a training subject (306, default
# model v1) its feed-forward quality on held-out views: no appearance transfer; no detail stage.
set -uo pipefail
. .venv/bin/activate
D=../shared/data/nersemble_samples
O=runs/head_v3
while pgrep -f "camera_refine[.]sh" > /dev/null; do sleep 10; done
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option transfer=false --json $O/train_306_fit40_notransfer.json
fastavatar evaluate --data $D --subject 306 --input-view 8 --refine 40 --refine-option detail_steps=0 --json $O/train_306_fit40_nodetail.json
