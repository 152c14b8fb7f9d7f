#!/usr/bin/env bash
# Product-path evaluation of default model v1 on its training subjects' held-out frontal view (camera 8),
# 300 steps, the oracle beside it. Run from the repository root (engine installed, ../shared beside it).
set -euo pipefail
D=../shared/data/nersemble_samples
for s in 128 306 369; do
  fastavatar evaluate --data $D --subject $s --input-view 8 --refine 300 --oracle --json runs/product_v1/train_$s.json
done
