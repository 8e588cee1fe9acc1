#!/usr/bin/env bash
# Fault injection on a tiny dataset (a few minutes on 2 CPUs): twin runs on one folder, a resume with other
# inputs, a corrupt feature cache, kill -9 of the driver mid-trial then --resume, SIGTERM then --resume, a run
# folder moved or copied then resumed, a full disk (a tmpfs, as root; the cache's full disk injected elsewhere),
# kill -9 during a cache build (its orphan partial file), a study.db held by another connection (a reader, a
# short and a long write lock), file names that are not UTF-8, a non-editable install. Prints a table: case, outcome,
# trials in trials.csv vs in the study, and anything lost. Everything happens under a temporary folder (kept
# with --keep).
#
#   scripts/checks/faults.sh [--keep]
set -uo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sweeper-faults.XXXXXX")"
[ "${1:-}" = "--keep" ] || trap 'rm -rf "$WORK"' EXIT
export SWEEPER_CACHE="$WORK/cache" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
cd "$REPO" || exit 1

ROWS=()
row() { ROWS+=("$1|$2|$3|$4"); }

# wait_for GLOB TRIES INTERVAL: wait until a file matches GLOB (at most TRIES checks, INTERVAL s apart);
# exits 0 when one does
wait_for() {
  local _
  for _ in $(seq "$2"); do
    compgen -G "$1" >/dev/null && return 0
    sleep "$3"
  done
  compgen -G "$1" >/dev/null
}

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

sweep_state() {  # sweep_state RUN: what is wrong with a finished sweep, or "none (...)"
  "$PY" - "$1" <<'EOF'
import json, sqlite3, sys
from pathlib import Path
import pandas as pd
run = Path(sys.argv[1])
t = pd.read_csv(run / "trials.csv")
with sqlite3.connect(run / "study.db") as db:
    states = [s for (s,) in db.execute("select state from trials order by number")]
bad = []
if sorted(t.trial) != list(range(len(t))):
    bad.append(f"trial numbers {sorted(t.trial)}")
if (t.status != "TERMINATED").any():
    bad.append(f"not ended: {list(t.trial[t.status != 'TERMINATED'])}")
if (t.epochs_run != t.epochs_planned).any():
    bad.append(f"epochs short: {list(t.trial[t.epochs_run != t.epochs_planned])}")
if "RUNNING" in states:
    bad.append(f"{states.count('RUNNING')} study trial(s) left RUNNING")
for f in (run / "ray").glob("*/epochs.jsonl"):
    epochs = [json.loads(x)["epoch"] for x in f.read_text().splitlines() if x.strip()]
    if len(epochs) != len(set(epochs)):
        bad.append(f"epoch recorded twice in {f.parent.name[:20]}")
print("; ".join(bad) or "none (all trials ended, all epochs run once)")
EOF
}

# 4. kill -9 of the driver while a trial runs (its first checkpoint is on disk), then --resume with the same
#    options: the killed trial continues, the study and the tables agree, the budget holds, and no Ray process
#    of the killed driver is left behind.
sed 's/max_epochs: 2, grace_period: 1/max_epochs: 4, grace_period: 4/; s/epochs: 2,/epochs: 4,/' \
  "$WORK/space.yaml" >"$WORK/long.yaml"
# the Ray processes below a process (taken before it is killed: its orphans are then re-parented), so that
# another job's Ray on this machine is not counted
ray_descendants() {
  ps -eo pid=,ppid= | awk -v root="$1" '{parent[$1] = $2} END {
    for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]; if (q == root && p != root) print p } }' |
    while read -r p; do ps -o args= -p "$p" 2>/dev/null | grep -qE 'ray::|/raylet|gcs_server|dashboard|runtime_env' && echo "$p"; done
}
setsid "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/long.yaml" \
  --name killed --out "$WORK/results" >"$WORK/kill.out" 2>"$WORK/kill.err" &
DRIVER=$!
if wait_for "$WORK/results/killed/ray/*/checkpoint_*/state.pt" 240 0.5; then
  RAY_OF_DRIVER=$(ray_descendants "$DRIVER")
  kill -9 "$DRIVER"; wait "$DRIVER" 2>/dev/null
  sleep 5
  LEFT=$(for p in $RAY_OF_DRIVER; do
    s=$(ps -o stat= -p "$p" 2>/dev/null | cut -c1); [ -n "$s" ] && [ "$s" != "Z" ] && echo "$p"; done | wc -l)
  RAY_SEEN=$(echo "$RAY_OF_DRIVER" | grep -c .)
  AT_KILL=$(counts "$WORK/results/killed")
  "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/long.yaml" \
    --name killed --out "$WORK/results" --resume >/dev/null 2>"$WORK/kill-resume.err"
  RC=$?
  STATE=$(sweep_state "$WORK/results/killed")
  row "kill -9 driver, --resume" "rc $RC; its Ray processes left 5 s after the kill: $LEFT of $RAY_SEEN" \
    "$(counts "$WORK/results/killed")" "$STATE"
else
  kill -9 "$DRIVER" 2>/dev/null
  row "kill -9 driver, --resume" "no checkpoint appeared in 120 s: not run" "-" "check $WORK/kill.err"
fi

# 4b. SIGTERM (what timeout, Slurm, Kubernetes and docker stop send) to the driver while a trial runs: it stops
#     as Ctrl-C does (exit 143, the resume command printed, no Ray warning). Before that folder is resumed, a
#     copy of it is moved elsewhere and resumed there, and another copy is resumed beside the original: each
#     finishes on its own and the original is not touched. Then the original resumes.
tree_hash() { (cd "$1" && find . -type f -exec sha256sum {} + | sort | sha256sum | cut -c1-16); }
setsid "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/long.yaml" \
  --name term --out "$WORK/results" >/dev/null 2>"$WORK/term.err" &
DRIVER=$!
if wait_for "$WORK/results/term/ray/*/checkpoint_*/state.pt" 240 0.5; then
  kill -TERM "$DRIVER"; wait "$DRIVER"; RC=$?
  NOISE=$(grep -c "WARNING\|Traceback\|SIGTERM received" "$WORK/term.err")
  PRINTED=$(grep -c "continue with: sweeper search --resume --name term" "$WORK/term.err")
  ORIGINAL=$(tree_hash "$WORK/results/term")
  mkdir -p "$WORK/was here" "$WORK/moved to" "$WORK/copy"
  cp -a "$WORK/results/term" "$WORK/was here/term" && mv "$WORK/was here/term" "$WORK/moved to/term"
  "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/long.yaml" \
    --name term --out "$WORK/moved to" --resume >/dev/null 2>"$WORK/moved.err"
  RC_M=$?
  OLD=$([ -e "$WORK/was here/term" ] && echo "old path WRITTEN" || echo "old path untouched")
  row "moved folder, --resume" "rc $RC_M (expected 0); $OLD" "$(counts "$WORK/moved to/term")" \
    "$(sweep_state "$WORK/moved to/term")"
  cp -a "$WORK/results/term" "$WORK/copy/term"
  "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/long.yaml" \
    --name term --out "$WORK/copy" --resume >/dev/null 2>"$WORK/copy.err"
  RC_C=$?
  SAME=$([ "$(tree_hash "$WORK/results/term")" = "$ORIGINAL" ] && echo "original byte-unchanged" || \
    echo "original CHANGED")
  row "copied folder, --resume" "rc $RC_C (expected 0); $SAME" "$(counts "$WORK/copy/term")" \
    "$(sweep_state "$WORK/copy/term")"
  "$PY" -m sweeper -q search --data "$WORK/data" --backbone random_vits14 --space "$WORK/long.yaml" \
    --name term --out "$WORK/results" --resume >/dev/null 2>"$WORK/term-resume.err"
  RC2=$?
  row "SIGTERM driver, --resume" "rc $RC, then $RC2 (expected 143, 0); resume printed $PRINTED, Ray noise $NOISE" \
    "$(counts "$WORK/results/term")" "$(sweep_state "$WORK/results/term")"
else
  kill -9 "$DRIVER" 2>/dev/null
  row "SIGTERM driver, --resume" "no checkpoint appeared in 120 s: not run" "-" "check $WORK/term.err"
fi

# 5. A full disk (a small tmpfs; needs root and mount): baseline, report and search stop in one line naming
#    the file or folder, leave no temporary file and keep what was written before; a search continues with
#    --resume once space is freed.
FULL="$WORK/full"
mkdir -p "$FULL"
if mount -t tmpfs -o size=256m tmpfs "$FULL" 2>/dev/null; then
  trap 'umount "$FULL" 2>/dev/null; [ "${1:-}" = "--keep" ] || rm -rf "$WORK"' EXIT
  fill() {  # leave about $1 KiB free on the tmpfs
    rm -f "$FULL/filler"
    local free; free=$(df -k --output=avail "$FULL" | tail -1)
    dd if=/dev/zero of="$FULL/filler" bs=1k count=$((free - $1)) status=none 2>/dev/null
  }
  temps() { find "$FULL" -name '*.tmp-*' -o -name '*.partial-*' | wc -l; }
  errline() { grep -h "^error:" "$1" | head -1 | sed -E "s#$FULL/##g" | cut -c8-62; }

  fill 16
  "$PY" -m sweeper -q baseline --data "$WORK/data" --backbone random_vits14 --epochs 2 --out "$FULL/base" \
    >/dev/null 2>"$WORK/full-base.err"
  RC=$?
  EPOCHS=$(grep -c . "$FULL/base/metrics.jsonl" 2>/dev/null || echo 0)
  row "full disk: baseline" "rc $RC; $(errline "$WORK/full-base.err")" "-" \
    "temp files left: $(temps); $EPOCHS finished epoch(s) in metrics.jsonl"
  rm -rf "$FULL/base" "$FULL/filler"

  cp -r "$WORK/results/twin" "$FULL/twin" && rm -rf "$FULL/twin/report"
  "$PY" -m sweeper -q report "$FULL/twin" >/dev/null 2>&1
  BEFORE=$(cd "$FULL/twin" && sha256sum report/* | sha256sum | cut -c1-16)
  fill 8
  "$PY" -m sweeper -q report "$FULL/twin" >/dev/null 2>"$WORK/full-report.err"
  RC=$?
  AFTER=$(cd "$FULL/twin" && sha256sum report/* | sha256sum | cut -c1-16)
  row "full disk: report" "rc $RC; $(errline "$WORK/full-report.err")" "$(counts "$FULL/twin")" \
    "temp files left: $(temps); earlier report $([ "$BEFORE" = "$AFTER" ] && echo intact || echo CHANGED)"
  rm -rf "$FULL/twin"

  fill 300
  search full --out "$FULL/results" >/dev/null 2>"$WORK/full-search.err"
  RC=$?
  AT_FULL=$(counts "$FULL/results/full")
  rm -f "$FULL/filler"
  search full --resume --out "$FULL/results" >/dev/null 2>"$WORK/full-resume.err"
  RC2=$?
  row "full disk: search, --resume" "rc $RC, then $RC2; $(errline "$WORK/full-search.err")" \
    "$(counts "$FULL/results/full")" "temp files left: $(temps); $AT_FULL when the disk was full"

  # Another job fills the disk (all but 64 KiB) after the run's check that its cache entries fit: the entry
  # then cannot be written. Was a Bus error (rc 135) with the partial file kept.
  rm -f "$FULL/filler"
  "$PY" - "$FULL" -q baseline --data "$WORK/data" --backbone random_vits14 --epochs 1 --out "$WORK/cache-full" \
    --cache-dir "$FULL/cache" >/dev/null 2>"$WORK/full-cache.err" <<'EOF2'
import shutil, sys
from pathlib import Path
import sweeper.data.cache as features
real = features.check_cache_fits
def then_filled(entries, cache_root):
    real(entries, cache_root)
    filler = Path(sys.argv[1]) / "filler"
    with open(filler, "wb") as f:
        while (free := shutil.disk_usage(filler.parent).free) > 64 * 1024:
            f.write(bytes(min(16 << 20, free - 64 * 1024)))
            f.flush()
features.check_cache_fits = then_filled
from sweeper.cli.main import main
sys.exit(main(sys.argv[2:]))
EOF2
  RC=$?
  row "full disk: cache" "rc $RC; $(errline "$WORK/full-cache.err")" "-" "temp files left: $(temps)"
  rm -rf "$FULL/cache" "$FULL/filler"
  umount "$FULL"
else
  row "full disk" "skipped: cannot mount a tmpfs here (needs root)" "-" "-"
  # the cache's full disk without root: posix_fallocate fails as on a full disk (ENOSPC)
  "$PY" - "$WORK" >"$WORK/full-cache.out" 2>"$WORK/full-cache.err" <<'EOF2'
import errno, os, sys
from sweeper.cli.main import main
def full(fd, offset, length):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.posix_fallocate = full
work = sys.argv[1]
sys.exit(main(["-q", "baseline", "--data", f"{work}/data", "--backbone", "random_vits14", "--epochs", "1",
               "--out", f"{work}/cache-full", "--cache-dir", f"{work}/cache-full-disk"]))
EOF2
  RC=$?
  LEFT=$(find "$WORK/cache-full-disk" -name '*.partial-*' 2>/dev/null | wc -l)
  row "full disk: cache (injected)" "rc $RC; $(grep -h '^error:' "$WORK/full-cache.err" | sed -E "s#$WORK/##g" | \
    cut -c8-62)" "-" "temp files left: $LEFT"
fi

# 6. kill -9 during a cache build leaves its partial file (.NAME.partial-HOST-PID); the next build of any entry
#    removes it, and `sweeper cache` lists it as orphaned before.
ORPHAN="$WORK/orphan-cache"
"$PY" -m sweeper -q baseline --data "$WORK/data" --backbone random_vits14 --epochs 1 --out "$WORK/orphan" \
  --cache-dir "$ORPHAN" >/dev/null 2>&1 &
BUILDER=$!
if wait_for "$ORPHAN/tokens/.*.partial-*" 1200 0.05; then
  kill -9 "$BUILDER"; wait "$BUILDER" 2>/dev/null
  PARTIAL=$(find "$ORPHAN" -name '.*.partial-*' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  LISTED=$("$PY" -m sweeper cache --cache-dir "$ORPHAN" 2>&1 | grep -c "orphaned (its build is gone)")
  "$PY" -m sweeper -q baseline --data "$WORK/other" --backbone random_vits14 --epochs 1 --out "$WORK/orphan2" \
    --cache-dir "$ORPHAN" >/dev/null 2>"$WORK/orphan.err"
  RC=$?
  row "orphan partial (kill -9)" "left $PARTIAL B; \`cache\` lists $LISTED orphan; next build rc $RC" "-" \
    "partial files left: $(find "$ORPHAN" -name '.*.partial-*' | wc -l)"
else
  kill -9 "$BUILDER" 2>/dev/null; wait "$BUILDER" 2>/dev/null
  row "orphan partial (kill -9)" "no partial file seen during the build: not run" "-" "-"
fi

# 8. study.db held by another connection once trial 0 reported an epoch (what a user's sqlite3 session or a
#    dashboard does): a plain read transaction and an exclusive lock held 8 s (beyond SQLite's 5 s default) are
#    waited out; an exclusive lock held past the busy timeout ($SWEEPER_STUDY_TIMEOUT, 2 s here) is one line with
#    the resume command and exit 2, and --resume then finishes the sweep.
hold() {  # hold DB MODE SECONDS PID: hold DB (read | exclusive) for SECONDS, or with 0 until PID has ended
  "$PY" - "$@" <<'EOF'
import os, sqlite3, sys, time
db, mode, seconds, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
deadline = time.time() + 300
while time.time() < deadline:
    try:
        if os.path.exists(db):  # each check's connection closed: one left open keeps study.db in WAL mode
            c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
            try:
                if c.execute("select count(*) from trial_intermediate_values").fetchone()[0]:
                    break
            finally:
                c.close()
    except sqlite3.Error:
        pass
    time.sleep(0.05)
con = sqlite3.connect(db, timeout=30, isolation_level=None)
con.execute("begin" if mode == "read" else "begin exclusive")
con.execute("select count(*) from trials").fetchone()
end = time.time() + seconds if seconds else deadline
while time.time() < end:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(0.1)
con.execute("rollback")
con.close()
EOF
}
for mode in read exclusive; do
  search "busy-$mode" >/dev/null 2>"$WORK/busy.err" &
  DRIVER=$!
  hold "$WORK/results/busy-$mode/study.db" "$mode" 8 "$DRIVER"
  wait "$DRIVER"; RC=$?
  row "study.db: $mode held 8 s" "rc $RC (expected 0); tracebacks $(grep -c Traceback "$WORK/busy.err")" \
    "$(counts "$WORK/results/busy-$mode")" "$(sweep_state "$WORK/results/busy-$mode")"
done
SWEEPER_STUDY_TIMEOUT=2 search held >/dev/null 2>"$WORK/held.err" &
DRIVER=$!
hold "$WORK/results/held/study.db" exclusive 0 "$DRIVER"
wait "$DRIVER"; RC=$?
LINES=$(grep -c "^error: .*study.db: the study database stayed locked by pid .*--resume --name held" "$WORK/held.err")
AT_LOCK=$(counts "$WORK/results/held")
search held --resume >/dev/null 2>"$WORK/held-resume.err"
RC2=$?
row "study.db: locked past timeout" "rc $RC, then $RC2 (expected 2, 0); one line naming holder: $LINES" \
  "$(counts "$WORK/results/held")" "$(sweep_state "$WORK/results/held"); $AT_LOCK at the lock"

# 9. File names that are not UTF-8 (bytes \xff\xfe, valid on Linux): one image/mask pair of each split so named;
#    baseline, report, evaluate, export and a search run, and every text file they write is UTF-8.
"$PY" - "$WORK" <<'EOF'
import os, sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import make_dataset, write_pair
work = Path(sys.argv[1])
root = make_dataset(work / "odd", train=4, val=2)
for i in range(2):
    write_pair(root / "test", f"{i:04d}.png", seed=900 + i)
for split in ("train", "val", "test"):
    for sub in ("Color_Images", "Segmentation"):
        os.rename(root / split / sub / "0000.png", root / split / sub / os.fsdecode(b"\xff\xfe-odd.png"))
EOF
odd() { "$PY" -m sweeper -q "$@" >/dev/null 2>>"$WORK/odd.err"; echo -n "$?"; }
STEPS="baseline $(odd baseline --data "$WORK/odd" --backbone random_vits14 --epochs 1 --out "$WORK/odd-base")"
STEPS="$STEPS, report $(odd report "$WORK/odd-base")"
STEPS="$STEPS, evaluate $(odd evaluate "$WORK/odd-base" --samples 2)"
STEPS="$STEPS, export $(odd export "$WORK/odd-base" --out "$WORK/odd-export")"
STEPS="$STEPS, search $(odd search --data "$WORK/odd" --backbone random_vits14 --space "$WORK/space.yaml" \
  --name odd --out "$WORK/results" --trials 2)"
NOT_UTF8=$("$PY" - "$WORK/odd-base" "$WORK/odd-export" "$WORK/results/odd" <<'EOF'
import sys
from pathlib import Path
bad = 0
for root in sys.argv[1:]:
    for p in Path(root).rglob("*"):
        # Ray's search_gen_state-*.json is a pickle (binary in any sweep): not a text file of sweeper's
        if p.suffix in (".json", ".jsonl", ".txt", ".md", ".html", ".csv") and p.is_file() \
                and not p.name.startswith("search_gen_state-"):
            try:
                p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                bad += 1
print(bad)
EOF
)
row "file names not UTF-8" "rc $STEPS; tracebacks $(grep -c Traceback "$WORK/odd.err")" \
  "$(counts "$WORK/results/odd")" "text files not UTF-8: $NOT_UTF8"

# 7. A non-editable install (the wheel, as `pip install .` installs it) in a fresh venv that sees this venv's
#    torch and Ray, run from another folder: synth, baseline, report, evaluate, export.
INST="$WORK/install"
mkdir -p "$INST/src" "$INST/elsewhere"
cp -r "$REPO/sweeper" "$REPO/pyproject.toml" "$REPO/README.md" "$INST/src/"
find "$INST/src" -name __pycache__ -prune -exec rm -rf {} +
STEPS=""
if "$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$INST/dist" "$INST/src" >"$INST/log" 2>&1 &&
   "$PY" -m venv --without-pip "$INST/venv" &&
   "$PY" -m pip --python "$INST/venv/bin/python" install --no-deps --no-index -q "$INST"/dist/sweeper-*.whl \
     >>"$INST/log" 2>&1; then
  SITE=$("$INST/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib']); print(sysconfig.get_paths()['platlib'])" \
    >"$SITE/test-venv-packages.pth"
  run_installed() { (cd "$INST/elsewhere" && "$INST/venv/bin/sweeper" -q "$@" >/dev/null 2>>"$INST/log"); echo -n "$?"; }
  STEPS="synth $(run_installed synth set --train 2 --val 1 --test 1 --size 224x126)"
  STEPS="$STEPS, baseline $(run_installed baseline --data set --epochs 1 --out base --cache-dir "$INST/cache")"
  STEPS="$STEPS, report $(run_installed report base)"
  STEPS="$STEPS, evaluate $(run_installed evaluate base --samples 1 --cache-dir "$INST/cache")"
  STEPS="$STEPS, export $(run_installed export base --out exported)"
  FROM=$(cd "$INST/elsewhere" && "$INST/venv/bin/python" -c "import sweeper; print(sweeper.__file__)" 2>/dev/null)
  row "non-editable install" "rc $STEPS" "-" \
    "$([ "${FROM#"$INST/venv"}" != "$FROM" ] && echo "ran the installed copy" || echo "NOT the installed copy: $FROM")"
else
  row "non-editable install" "could not build or install the wheel (see $INST/log)" "-" "-"
fi

printf '\n%-28s | %-62s | %-8s | %s\n' "case" "outcome" "csv/study" "lost"
printf '%s\n' "$(printf -- '-%.0s' {1..130})"
for r in "${ROWS[@]}"; do
  IFS='|' read -r c o n l <<<"$r"
  printf '%-28s | %-62s | %-8s | %s\n' "$c" "$o" "$n" "$l"
done
