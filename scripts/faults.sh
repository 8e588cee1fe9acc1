#!/usr/bin/env bash
# Fault injection on a tiny dataset (a few minutes on 2 CPUs): twin runs on one folder, a resume with other
# inputs, a corrupt feature cache. Prints a table: case, outcome, trials in trials.csv vs in the study, and
# anything lost. Everything happens under a temporary folder (kept with --keep).
#
#   scripts/faults.sh [--keep]
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sweeper-faults.XXXXXX")"
[ "${1:-}" = "--keep" ] || trap 'rm -rf "$WORK"' EXIT
export SWEEPER_CACHE="$WORK/cache" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
cd "$REPO" || exit 1

ROWS=()
row() { ROWS+=("$1|$2|$3|$4"); }

# trials.csv rows vs study rows ("-" where a file is missing)
counts() {
  "$PY" - "$1" <<'EOF'
import sqlite3, sys
from pathlib import Path
run = Path(sys.argv[1])
csv = run / "trials.csv"
rows = sum(1 for _ in open(csv)) - 1 if csv.is_file() else "-"
study = "-"
if (run / "study.db").is_file():
    with sqlite3.connect(run / "study.db") as db:
        study = db.execute("select count(*) from trials").fetchone()[0]
print(f"{rows} vs {study}")
EOF
}

"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import make_dataset
work = Path(sys.argv[1])
make_dataset(work / "data", train=4, val=2)
make_dataset(work / "other", train=4, val=2, size=(98, 56))
(work / "space.yaml").write_text("""
metric: val_iou
mode: max
trials: 3
max_concurrent: 1
asha: {max_epochs: 2, grace_period: 1, reduction_factor: 2}
fixed: {epochs: 2, train_metrics: false, image_height: 28, image_width: 56}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
""")
EOF

search() {  # search NAME [extra args...]
  local name="$1"; shift
  "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/space.yaml" \
    --name "$name" --out "$WORK/results" "$@"
}

# 1. Two searches with the same --name at once: one runs, the other is refused in one line naming the owner.
search twin >"$WORK/twin-a.out" 2>"$WORK/twin-a.err" &
A=$!
sleep 0.5
search twin >"$WORK/twin-b.out" 2>"$WORK/twin-b.err" &
B=$!
wait $A; RA=$?
wait $B; RB=$?
REFUSED=$(grep -h "^error: .*in use by" "$WORK/twin-a.err" "$WORK/twin-b.err" | grep -o "pid [0-9]* on [^,]*" | head -1)
if [ $((RA + RB)) -eq 2 ] && [ -n "$REFUSED" ]; then
  OUT="rc $RA/$RB; second refused: in use by $REFUSED"
  LOST=$([ "$(counts "$WORK/results/twin")" = "3 vs 3" ] && echo none || echo "tables differ")
else
  OUT="rc $RA/$RB (expected one 0 and one 2)"; LOST="check $WORK"
fi
row "twin runs, same --name" "$OUT" "$(counts "$WORK/results/twin")" "$LOST"

# 2. Resume with another --data, --space, --trials...: refused before anything is written.
sed 's/high: 1.0e-2/high: 1.0e-1/' "$WORK/space.yaml" >"$WORK/other.yaml"
for case in "--data OTHER" "--space OTHER.yaml" "--trials 6" "--seed 7" "--label-mode nearest"; do
  BEFORE=$(sha256sum "$WORK/results/twin/sweep.json" | cut -c1-16)
  # shellcheck disable=SC2086
  if [ "${case%% *}" = "--data" ]; then
    "$PY" -m sweeper -q search --data "$WORK/other" --backbone random_vits14 --space "$WORK/space.yaml" \
      --name twin --out "$WORK/results" --resume >/dev/null 2>"$WORK/resume.err"
  elif [ "${case%% *}" = "--space" ]; then
    "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/other.yaml" \
      --name twin --out "$WORK/results" --resume >/dev/null 2>"$WORK/resume.err"
  else
    search twin --resume $case >/dev/null 2>"$WORK/resume.err"
  fi
  RC=$?
  AFTER=$(sha256sum "$WORK/results/twin/sweep.json" | cut -c1-16)
  MSG=$(grep -h "^error:" "$WORK/resume.err" | sed -E 's/.*cannot resume with ([a-z_]+) .*/\1/' | head -1)
  LOST=$([ "$BEFORE" = "$AFTER" ] && echo "none (sweep.json unchanged)" || echo "sweep.json CHANGED")
  row "resume $case" "rc $RC; names field: ${MSG:-none}" "$(counts "$WORK/results/twin")" "$LOST"
done

# The same command with --resume still resumes (here: nothing left to run).
search twin --resume >/dev/null 2>"$WORK/resume.err"
RC=$?
row "resume, same options" "rc $RC (expected 0)" "$(counts "$WORK/results/twin")" \
  "$([ "$(counts "$WORK/results/twin")" = "3 vs 3" ] && echo none || echo "tables differ")"

# 3. A corrupt token cache: zeroed (same size), truncated, random bytes. Each is rebuilt with a warning and
#    the baseline's numbers are the clean run's.
base() {  # base OUT
  "$PY" -m sweeper -q baseline --data "$WORK/data" --backbone random_vits14 --epochs 1 --out "$1" --overwrite
}
base "$WORK/clean" >/dev/null 2>&1
CLEAN=$(grep -o '"val_iou": [0-9.e-]*' "$WORK/clean/metrics.jsonl" | head -1)
for how in zeros truncated garbage; do
  "$PY" - "$SWEEPER_CACHE" "$how" <<'EOF'
import os, sys
from pathlib import Path
import numpy as np
how = sys.argv[2]
for path in Path(sys.argv[1], "tokens").glob("train-*.npy"):
    try:  # the entries the last baseline used (others may be damaged by an earlier case, never rebuilt)
        header = path.stat().st_size - np.load(path, mmap_mode="r").nbytes
    except ValueError:
        continue
    raw = path.read_bytes()
    path.write_bytes({"zeros": raw[:header] + bytes(len(raw) - header), "truncated": raw[: len(raw) // 2],
                      "garbage": os.urandom(len(raw))}[how])
EOF
  base "$WORK/corrupt-$how" >/dev/null 2>"$WORK/corrupt.err"
  RC=$?
  GOT=$(grep -o '"val_iou": [0-9.e-]*' "$WORK/corrupt-$how/metrics.jsonl" 2>/dev/null | head -1)
  WARNED=$(grep -c "damaged.*rebuilding it" "$WORK/corrupt.err")
  LOST=$([ "$GOT" = "$CLEAN" ] && echo "none (val IoU as clean run)" || echo "val IoU ${GOT:-?} vs ${CLEAN:-?}")
  row "token cache $how" "rc $RC; rebuilt with $WARNED warning(s)" "-" "$LOST"
done

printf '\n%-28s | %-62s | %-8s | %s\n' "case" "outcome" "csv/study" "lost"
printf '%s\n' "$(printf -- '-%.0s' {1..130})"
for r in "${ROWS[@]}"; do
  IFS='|' read -r c o n l <<<"$r"
  printf '%-28s | %-62s | %-8s | %s\n' "$c" "$o" "$n" "$l"
done
