#!/usr/bin/env bash
# The exact commands that produced fastavatar_engine/weights/default_v2 and runs/loo_369_v2/model
# (2-core CPU, no GPU), after runs/default_v2/people.sh (stage a': the training people's likeness
# fits, made by the leave-369-out v1 model). Run from the repository root with the engine installed
# and ../shared/data beside it. The decoder stage resumes from its checkpoint.
set -euo pipefail
D=../shared/data
N=$D/nersemble_samples
R=runs/default_v2
L=runs/loo_369_v2
M=fastavatar_engine/weights/default_v2

# --- leave-369-out v2: the people + subjects 128 and 306 (as the leave-369-out v1 model decodes them)
mkdir -p $L && ln -sfn ../default_v2/people $L/people
fastavatar train prior --data $D --out $L --weights runs/loo_369/model --subjects 128 306 \
  --subject-weights runs/loo_369/model --decoder-steps 3000 --encoder-steps 3000 --model-id fastavatar-loo-369-v2
fastavatar train package-prior --data $D --out $L --model-dir $L/model --model-id fastavatar-loo-369-v2
fastavatar evaluate --data $N --subject 369 --input-view 8 --refine 40 --weights $L/model --json $L/eval_369.json

# --- default v2: the people + subjects 128, 306, 369 (as default v1 decodes them)
fastavatar train prior --data $D --out $R --weights runs/loo_369/model --subjects 128 306 369 \
  --subject-weights fastavatar_engine/weights/default_v1 --decoder-steps 3000 --encoder-steps 3000 \
  --model-id fastavatar-default-v2
mapfile -t CMDS < <(grep -E '^(fastavatar|  --)' "$0")
fastavatar train package-prior --data $D --out $R --model-dir $M --model-id fastavatar-default-v2 \
  --eval-json $L/eval_369.json --commands "${CMDS[@]}"
echo "all done"
