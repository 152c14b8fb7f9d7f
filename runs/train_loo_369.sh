#!/usr/bin/env bash
# The exact commands that produced runs/loo_369/model (the leave-one-subject-out model: trained on
# subjects 128 + 306, camera 8 held out, evaluated on subject 369) on a 2-core CPU. Run from the
# repository root with the engine installed and ../shared/data/nersemble_samples beside it.
set -euo pipefail
D=../shared/data/nersemble_samples; L=runs/loo_369
fastavatar train fit      --data $D --subjects 128 306 --out $L --fit-steps 1000
fastavatar train template --data $D --subjects 128 306 --out $L
fastavatar train decoder  --data $D --subjects 128 306 --out $L --decoder-steps 2800 --decoder-distill-steps 2500
fastavatar train encoder  --data $D --subjects 128 306 --out $L --encoder-steps 2000
fastavatar train package  --data $D --subjects 128 306 --out $L --model-dir $L/model --model-id fastavatar-loo-369
