#!/usr/bin/env bash
# The fair-comparison screen (results/fair_comparison.{json,md}): every row at ONE commit, trained from a
# clean worktree of that commit, one (variant, seed) at a time so that a session can stop between runs.
#
#   bash benchmarks/fair_comparison.sh [COMMIT]        # default: the commit recorded in the results file
#
# - The runs own the CPU: started in their own session group at nice -10 (echo -10 > /proc/self/autogroup);
#   run tests or builds meanwhile through `setsid` only, or better not at all (they slow the timed runs).
# - Between runs it waits while $PAUSE exists (default /tmp/nami-pause): touch it, wait for the current run
#   to finish, run your tests, remove it. It stops between runs when $STOP exists.
# - Rows already in the results file are skipped (nami ablate adds to a file of the same protocol), so the
#   screen continues across sessions; the file is copied back into this checkout after every run.
# - Check the machine string: a comparison's rows must come from one machine (see the Runs table).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# The worktree lies elsewhere (/tmp): the data is this checkout's (../shared/data) unless NAMI_DATA says.
export NAMI_DATA=${NAMI_DATA:-$(cd "$REPO/.." && pwd)/shared/data}
OUT=${OUT:-results/fair_comparison}   # another screen of the same protocol: OUT, TITLE, VARIANTS (wave_earns.sh)
TITLE=${TITLE:-"Fair comparison: which component earns the gain (screen, selection split)"}
PAUSE=${PAUSE:-/tmp/nami-pause}
STOP=${STOP:-/tmp/nami-stop}
VARIANTS=${VARIANTS:-"transformer transformer+rope transformer+conv transformer+rope+conv conv-only wave wave+conv conv-only-noqm wave+conv-noqm"}
SEEDS=${SEEDS:-"0 1 2"}
COMMIT=${1:-$(python3 -c "import json; print(json.load(open('$OUT.json'))['rows'][0]['runs'][0]['commit'])" 2>/dev/null || git rev-parse HEAD)}
TREE=${TREE:-/tmp/nami-fair-$COMMIT}  # a clean worktree of that commit (shared by screens of the same commit)
[ -d "$TREE" ] || git worktree add --detach "$TREE" "$COMMIT"
mkdir -p "$TREE/results"
[ -f "$OUT.json" ] && [ ! -f "$TREE/$OUT.json" ] && cp "$OUT.json" "$OUT.md" "$TREE/results/"
echo -10 > /proc/self/autogroup 2>/dev/null || echo "note: could not raise this group's priority (not root?)"
export PYTHONPATH="$TREE/src"  # the worktree's nami, not this checkout's
cd "$TREE"
for seed in $SEEDS; do
  for v in $VARIANTS; do
    while [ -f "$PAUSE" ]; do sleep 5; done
    [ -f "$STOP" ] && { echo "stopped ($STOP exists)"; exit 0; }
    python3 -m nami ablate --variants "$v" --seeds "$seed" \
      --title "$TITLE" --out "$OUT"
    cp "$OUT.json" "$OUT.md" "$REPO/results/"
  done
done
echo "screen complete: $REPO/$OUT.md"
