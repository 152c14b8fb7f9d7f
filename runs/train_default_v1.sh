#!/usr/bin/env bash
# The exact commands that produced fastavatar_engine/weights/default_v1 and the numbers in its
# model card (2-core CPU, no GPU). Run from the repository root with the engine installed and
# ../shared/data/nersemble_samples beside it. Every stage resumes / skips finished work.
set -euo pipefail
D=../shared/data/nersemble_samples
R=runs/default_v1
M=fastavatar_engine/weights/default_v1
L=runs/loo_369
while pgrep -f "fastavatar train fit" >/dev/null; do sleep 15; done   # an earlier fit still running

# --- default model v1: subjects 128, 306, 369; camera 8 held out of every stage
fastavatar train fit      --data $D --subjects 128 306 369 --out $R --fit-steps 1000
fastavatar train template --data $D --subjects 128 306 369 --out $R
fastavatar train decoder  --data $D --subjects 128 306 369 --out $R --decoder-steps 2800 --decoder-distill-steps 2500
fastavatar train encoder  --data $D --subjects 128 306 369 --out $R --encoder-steps 2000
fastavatar train package  --data $D --subjects 128 306 369 --out $R --model-dir $M --model-id fastavatar-default-v1
for s in 128 306 369; do
  fastavatar evaluate --data $D --subject $s --input-view 8 --refine 100 --refine-mode full --weights $M --json $R/eval_$s.json
done

# --- leave-one-subject-out: train on 128 + 306 (their stage-a fits reused), evaluate on 369
mkdir -p $L/fits && cp $R/fits/128.ply $R/fits/128.json $R/fits/306.ply $R/fits/306.json $L/fits/
fastavatar train template --data $D --subjects 128 306 --out $L
fastavatar train decoder  --data $D --subjects 128 306 --out $L --decoder-steps 2800 --decoder-distill-steps 2500
fastavatar train encoder  --data $D --subjects 128 306 --out $L --encoder-steps 2000
fastavatar train package  --data $D --subjects 128 306 --out $L --model-dir $L/model --model-id fastavatar-loo-369
fastavatar evaluate --data $D --subject 369 --input-view 8 --refine 100 --refine-mode full --weights $L/model --json $L/eval_369.json

# --- final bundle: the card carries the commands above and every evaluation
mapfile -t CMDS < <(grep -E '^(fastavatar|  fastavatar|for|done)' "$0")
fastavatar train package  --data $D --subjects 128 306 369 --out $R --model-dir $M --model-id fastavatar-default-v1 \
  --eval-json $R/eval_128.json $R/eval_306.json $R/eval_369.json $L/eval_369.json --commands "${CMDS[@]}"
echo "all done"
