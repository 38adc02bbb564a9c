#!/usr/bin/env bash
# Does the offline world tell methods apart? Untrained context, zero-shot, clean CoOp and, at one
# noise (default sym 80 %), CE / NLPrompt / DSPT, all with --protocol dspt (CoOp's vit_b16_ep50).
#
#   DATASET=shapes-fine MODEL=tiny-shapes-fine NOISE="--sym 0.8" bash benchmarks/world_check.sh
#
# EXTRA="--epochs 10" shortens training for quick iteration (final numbers: the full protocol).
set -euo pipefail
DATASET=${DATASET:-shapes}
MODEL=${MODEL:-tiny-shapes}
NOISE=${NOISE:---sym 0.8}
SEED=${SEED:-1}
EXTRA=${EXTRA:-}
nlp() { "${PYTHON:-python}" -m nlp_cli "$@"; }
acc() { "${PYTHON:-python}" -c 'import json,sys; m=json.load(sys.stdin); print("%.2f" % (100 * (m.get("last5_mean_acc") or m["acc1"])))'; }

nlp download "$DATASET" >/dev/null
feats=$(nlp embed "$DATASET" --model "$MODEL")
# shellcheck disable=SC2086  # NOISE and EXTRA hold several words on purpose
labels=$(nlp corrupt "$feats" $NOISE --seed "$SEED")
echo "untrained  $(nlp eval --untrained "$feats" --seed "$SEED" --json | acc)"
echo "zero-shot  $(nlp eval --zero-shot "$feats" --json | acc)"
# shellcheck disable=SC2086
echo "clean-ce   $(nlp train "$feats" --loss ce --seed "$SEED" --protocol dspt $EXTRA | nlp eval --json | acc)"
# shellcheck disable=SC2086
echo "ce         $(nlp train "$labels" --loss ce --seed "$SEED" --protocol dspt $EXTRA | nlp eval --json | acc)"
# shellcheck disable=SC2086
echo "nlprompt   $(nlp purify "$labels" | nlp train --loss nlprompt --seed "$SEED" --protocol dspt $EXTRA | nlp eval --json | acc)"
# shellcheck disable=SC2086
echo "dsoftmax   $(nlp train "$labels" --loss dsoftmax --seed "$SEED" --protocol dspt $EXTRA | nlp eval --json | acc)"
