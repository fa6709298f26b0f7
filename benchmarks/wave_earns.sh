#!/usr/bin/env bash
# "Make the Wave layer earn its place" (the research issue): question-aware and richer global mixing on
# top of local mixing, screened against conv-only under the fair comparison's protocol (scratch QA,
# 8 minutes, trained on JaQuAD train, scored on JaQuAD dev — the selection split), with and without the
# question-match feature, every row at ONE commit → results/wave_earns.{json,md}.
#
#   bash benchmarks/wave_earns.sh [COMMIT]            # SEEDS="0 1 2" by default; VARIANTS to narrow it
#
# Rows: the controls (conv-only, wave+conv) again at this commit, and the levers: slot_wave layers
# (several soft global states), a window-norm wave branch, the cross-wave branch (each segment's wave
# modulates the other's). wave+conv+qattn has attention over the question: it is a HYBRID (its family
# says so) and is reported as such, not as Wave. Seed-major, so a first pass gives every row one seed.
# Run by fair_comparison.sh: clean worktree, autogroup −10, $PAUSE / $STOP between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same driver as the fair comparison (one clean worktree of one commit, one run at a time, pausable),
# writing its own file; the commit defaults to this checkout's HEAD when results/wave_earns.json is new.
export OUT=results/wave_earns
export TITLE="Wave earns its place? Global mixing over local mixing (screen, selection split)"
export VARIANTS=${VARIANTS:-"conv-only wave+conv slotwave+conv wave+conv+window wave+conv+crosswave wave+conv+qattn
  conv-only-noqm wave+conv-noqm slotwave+conv-noqm wave+conv+window-noqm wave+conv+crosswave-noqm wave+conv+qattn-noqm"}
exec bash benchmarks/fair_comparison.sh "$@"
