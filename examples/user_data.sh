#!/usr/bin/env bash
# Your own images: a folder with one sub-folder per class (or a CSV path,label[,split]).
#
#   bash examples/user_data.sh ~/photos/my_dataset [MODEL]
#
# 1. embed the images once, 2. take your labels as they are (no synthetic noise),
# 3. ask PromptOT which labels look wrong (suspects.csv, most suspicious first),
# 4. train NLPrompt on the purified partition, 5. evaluate on your test split.
# Without a `test` split in the folder, a 50/20/30 split per class is drawn (CoOp's rule).
set -euo pipefail

data=${1:?usage: bash examples/user_data.sh FOLDER_OR_CSV [MODEL]}
model=${2:-ViT-B/16}          # e.g. ViT-B/16 after `nlp download --model ViT-B/16`, or tiny-shapes
report=${REPORT:-suspects.csv}

feats=$(nlp embed "$data" --model "$model")
labels=$(nlp corrupt "$feats")                       # your labels, unchanged
partition=$(nlp purify "$labels" --report "$report")
echo "suspected wrong labels: $report" >&2
prompt=$(nlp train "$partition" --loss nlprompt)
nlp eval "$prompt" --json
