#!/usr/bin/env bash
# Which of your labels are wrong? Plant a few known errors and watch the report find them.
#
#   bash examples/user_data.sh                         # the easy world: shapes-easy + tiny-shapes-easy
#   bash examples/user_data.sh ~/photos/my_dataset ViT-B/16
#
# Your folder (one sub-folder per class, or train/ val/ test/ folders of class folders) is
# copied, never changed: PLANT (default 3) images per split are moved into the next class's
# folder of the copy, in every split it has. Then
#   1. `nlp embed` the copy once,
#   2. `nlp label-issues` ranks every image of every split (report.csv, suspects.png,
#      suspects.html) and estimates how many labels are wrong,
#   3. the script says where the planted errors landed in the ranking.
# With TRAIN=1 it then purifies the training labels and trains NLPrompt on them.
# Without a `test` split in the folder, a 50/20/30 split per class is drawn (CoOp's rule).
set -euo pipefail

src=${1:-}
model=${2:-tiny-shapes-easy}
plant=${PLANT:-3}
work=${WORK:-$(mktemp -d)}
user="$work/my_photos"
mkdir -p "$user"

if [ -z "$src" ]; then
    # Five classes of the easy generated world, as a user would lay them out: train/val/test.
    world=$(nlp download shapes-easy --root "$work/world")
    for s in train val test; do
        for c in red_circle blue_star green_square yellow_triangle purple_cross; do
            mkdir -p "$user/$s/${c//_/ }"
            cp "$world/images/$c/${s}_"*.png "$user/$s/${c//_/ }/"
        done
    done
else
    cp -R "$src/." "$user/"
fi

# Plant: in each split folder (or the top folder when there are none), move `plant` images
# from class k to class k+1, cycling through the classes.
: >"$work/planted.txt"
splits=()
for s in train val test; do [ -d "$user/$s" ] && splits+=("$user/$s"); done
[ ${#splits[@]} -eq 0 ] && splits=("$user")
for base in "${splits[@]}"; do
    mapfile -t classes < <(find "$base" -mindepth 1 -maxdepth 1 -type d | sort)
    n=${#classes[@]}
    for ((j = 0; j < plant; j++)); do
        from=${classes[$((j % n))]}
        to=${classes[$(((j + 1) % n))]}
        file=$(find "$from" -maxdepth 1 -type f ! -name 'planted_*' | sort | head -n 1)
        dest="$to/planted_$(basename "$file")"
        mv "$file" "$dest"
        echo "${dest#"$user"/}" >>"$work/planted.txt"
    done
done
echo "planted $(wc -l <"$work/planted.txt") wrong labels in $user" >&2

feats=$(nlp embed "$user" --model "$model")
report=$(nlp label-issues "$feats" --out "$work/report.csv" \
    --sheet "$work/suspects.png" --html "$work/suspects.html")

python3 - "$report" "$work/planted.txt" "$user" <<'EOF'
import csv, sys
from pathlib import Path

report, planted, root = sys.argv[1], Path(sys.argv[2]).read_text().split("\n"), Path(sys.argv[3])
planted = {p for p in planted if p}
rows = list(csv.DictReader(open(report, newline="")))
found = {}
for r in rows:
    rel = Path(r["path"]).relative_to(root).as_posix()
    if rel in planted:
        found[rel] = r
flagged = [p for p, r in found.items() if r["flagged"] == "1"]
print(f"the report flags {sum(r['flagged'] == '1' for r in rows)} of {len(rows)} images; "
      f"{len(flagged)} of the {len(planted)} planted errors are among them", file=sys.stderr)
for p, r in sorted(found.items(), key=lambda kv: int(kv[1]["rank"])):
    print(f"  rank {r['rank']:>4}  {r['split']:<5}  {r['given_label']} -> "
          f"{r['suggested_label']}  p={float(r['score']):.3g}  {p}", file=sys.stderr)
EOF
echo "report: $report; picture: $work/suspects.png, $work/suspects.html" >&2

if [ "${TRAIN:-0}" = 1 ]; then
    labels=$(nlp corrupt "$feats")                  # your labels, unchanged
    partition=$(nlp purify "$labels" --method cleanlab --report "$work/suspects.csv")
    prompt=$(nlp train "$partition" --loss nlprompt)
    nlp eval "$prompt" --json
fi
