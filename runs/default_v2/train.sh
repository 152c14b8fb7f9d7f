#!/usr/bin/env bash
# The commands of default v2's training (2-core CPU, no GPU), after runs/default_v2/people.sh
#
# STATUS (2026-12-07, session 3): REPLACED by default v2.1 (runs/default_v2_c128/train.sh), which refits the
# people records' expressions (train people --refit-expressions) and uses 128 components; rerunning the
# commands below on the refitted records gives runs/default_v2_c64_expr's ablation, not session 2's v2.
# STATUS (2026-12-06, session 2): default v2 SHIPPED (fastavatar_engine/weights/default_v2). What ran, in order:
#  1. session 1, free auto-decoder codes + the MLP encoder (4000 decoder steps): runs/default_v2/free_codes/
#     (leave-369-out feed-forward 14.00 dB strict, fit-40 14.33 dB).
#  2. session 1, PCA codes (unwhitened) + MLP encoder, 3000 steps: runs/default_v2/latent_v2.json (rank-1 0%).
#  3. session 1, whitened PCA codes + ridge encoder + dc_weight 4: latent_v2_candidate.json (rank-1 8%): the
#     MLP decoder decoded every code as nearly the mean face.
#  4. session 2, the decoder carries the PCA basis (linear_basis, --decoder-steps 0: the MLP is not trained):
#     latent_v2_linear.json (rank-1 52%, smile +6.8%).
#  5. session 2, + each single-photo target's fitted expression carried into its Gaussians
#     (train/targets.with_expressions; `fastavatar train people` first added the head fit's expressions
#     to the stage-a' records, ~8 min): latent_v2_expr.json. This script's commands are this run's.
# The fits of stage a' (runs/default_v2/people, not committed) are rebuilt by people.sh.
#
# Original header: the exact commands for fastavatar_engine/weights/default_v2 and runs/loo_369_v2/model,
# after runs/default_v2/people.sh (stage a': the training people's likeness
# fits, made by the leave-369-out v1 model). Run from the repository root with the engine installed
# and ../shared/data beside it.
set -euo pipefail
D=../shared/data
N=$D/nersemble_samples
R=runs/default_v2
L=runs/loo_369_v2
M=fastavatar_engine/weights/default_v2

# --- leave-369-out v2: the people + subjects 128 and 306 (as the leave-369-out v1 model decodes them)
mkdir -p $L && ln -sfn ../default_v2/people $L/people
fastavatar train prior --data $D --out $L --weights runs/loo_369/model --subjects 128 306 \
  --subject-weights runs/loo_369/model --decoder-steps 0 --model-id fastavatar-loo-369-v2
fastavatar train package-prior --data $D --out $L --model-dir $L/model --model-id fastavatar-loo-369-v2
fastavatar evaluate --data $N --subject 369 --input-view 8 --refine 40 --weights $L/model --json $L/eval_369.json

# --- default v2: the people + subjects 128, 306, 369 (as default v1 decodes them)
fastavatar train prior --data $D --out $R --weights runs/loo_369/model --subjects 128 306 369 \
  --subject-weights fastavatar_engine/weights/default_v1 --decoder-steps 0 --model-id fastavatar-default-v2
fastavatar train package-prior --data $D --out $R --model-dir $R/model --model-id fastavatar-default-v2
python benchmarks/bench_latent.py --weights $R/model --out $R/latent_v2_expr.json
mapfile -t CMDS < <(grep -E '^(fastavatar|  --)' "$0")
fastavatar train package-prior --data $D --out $R --model-dir $M --model-id fastavatar-default-v2 \
  --eval-json $L/eval_369.json $R/latent_v2_expr.json --commands "${CMDS[@]}"
echo "all done"

# --- component study (session 2; not shipped): the same stages with 32 and 128 principal components.
# They ran through the Python API into /tmp/c32 and /tmp/c128 (people/ linked there), before the CLI had
# --components; the equivalent commands are
#   mkdir -p runs/default_v2_c128 && ln -sfn ../default_v2/people runs/default_v2_c128/people
#   fastavatar train prior --data $D --out runs/default_v2_c128 --weights runs/loo_369/model --subjects 128 306 369 \
#     --subject-weights fastavatar_engine/weights/default_v1 --decoder-steps 0 --components 128 --model-id fastavatar-default-v2-c128
#   fastavatar train package-prior --data $D --out runs/default_v2_c128 --model-dir runs/default_v2_c128/model --model-id fastavatar-default-v2-c128
#   python benchmarks/bench_latent.py --weights runs/default_v2_c128/model --out runs/default_v2/latent_v2_c128.json
# results: runs/default_v2/latent_v2_c{32,128}.json, c128_{decoder,encoder,directions}.json
