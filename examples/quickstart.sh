#!/usr/bin/env bash
# Offline quickstart: the generated `shapes` world (56 colour-pair classes) and its bundled tiny
# CLIP `tiny-shapes`, end to end.
#
#   download shapes → embed → corrupt (sym 80 %) → purify → train ce / dsoftmax / nlprompt → eval
#
# The same, one stage per pipe: nlp corrupt FEATS --sym 0.8 | nlp purify | nlp train --loss nlprompt | nlp eval
#
# Next to the methods stand the baselines that give their numbers a meaning: zero-shot CLIP (the
# hand prompt), an untrained random context (what the prompt is before any learning) and CoOp on
# the clean labels (what learning reaches without noise).
#
# Every stage prints only the path of what it wrote, so the stages chain with $(…) and pipes.
# Change the noise with NOISE="--pair 0.4" bash examples/quickstart.sh; artifacts go to NLP_HOME
# (default ~/.cache/nlp) and a rerun reuses them. DATASET=shapes-easy MODEL=tiny-shapes-easy runs
# it in the easy world, where an untrained context already scores high (README).
set -euo pipefail

DATASET=${DATASET:-shapes}
MODEL=${MODEL:-tiny-shapes}
NOISE=${NOISE:---sym 0.8}
SEED=${SEED:-1}
TRAIN=${TRAIN:---protocol dspt}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

nlp download "$DATASET" >/dev/null
# two DataLoader workers decode the images while the image tower encodes them
feats=$(nlp embed "$DATASET" --model "$MODEL" --workers 2)
# shellcheck disable=SC2086  # NOISE and TRAIN hold several words on purpose
labels=$(nlp corrupt "$feats" $NOISE --seed "$SEED")

# The two baselines that need no training run beside the purification.
nlp eval --zero-shot "$feats" --json >"$work/zero-shot.json" &
zero_shot=$!
nlp eval --untrained "$feats" --seed "$SEED" --json >"$work/untrained.json" &
untrained=$!
# NLPrompt's purification: optimal transport against the text prototypes splits the noisy labels
# into the samples it finds clean (trained with CE) and the rest (trained with MAE, 1 − p_y).
part=$(nlp purify "$labels")
wait "$zero_shot"
wait "$untrained"
# Four runs: CoOp on the clean labels, CoOp and DSPT on the noisy ones, NLPrompt on the
# partition. Two `nlp train` calls side by side (each on half the cores, its default), each
# training its two runs paired item by item (--zip) together, one text-encoder pass per step for
# both (each run equals the run alone). One path per line.
# shellcheck disable=SC2086
nlp train "$feats" "$labels" --zip --loss ce,ce --seed "$SEED" $TRAIN >"$work/a.txt" &
first=$!
# shellcheck disable=SC2086
nlp train "$labels" "$part" --zip --loss dsoftmax,nlprompt --seed "$SEED" $TRAIN >"$work/b.txt" &
second=$!
wait "$first"
wait "$second"
mapfile -t prompts < <(cat "$work/a.txt" "$work/b.txt")
# One `nlp eval` for the four prompts (one model load): a JSON line each, in their order.
nlp eval "${prompts[@]}" --json >"$work/trained.jsonl"

python - "$work" "$NOISE" "$DATASET" "$MODEL" <<'PY'
import json, sys
from pathlib import Path

work, noise, dataset, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
metrics = {key: json.loads((work / f"{key}.json").read_text()) for key in ("untrained", "zero-shot")}
trained = (work / "trained.jsonl").read_text().splitlines()
metrics.update(zip(("clean", "ce", "dsoftmax", "nlprompt"), map(json.loads, trained), strict=True))
rows = [("Untrained context", "untrained"), ("Zero-shot CLIP", "zero-shot"),
        ("CoOp, clean labels", "clean"), ("CoOp (ce)", "ce"), ("DSPT (dsoftmax)", "dsoftmax"),
        ("NLPrompt", "nlprompt")]
print(f"\n{dataset}, {model} CLIP, noise {noise}: test accuracy (%)\n")
print(f"| method | final epoch | mean of last 5 epochs |\n|---|---:|---:|")
for name, key in rows:
    m = metrics[key]
    last5 = m.get("last5_mean_acc")
    print(f"| {name} | {100 * m['acc1']:.2f} | {'' if last5 is None else f'{100 * last5:.2f}'} |")
PY
