#!/usr/bin/env bash
# "Make the Wave layer earn its place" (the research issue): question-aware and richer global mixing on
# top of local mixing, screened against conv-only under the fair comparison's protocol (scratch QA,
# 8 minutes, trained on JaQuAD train, scored on JaQuAD dev — the selection split), with and without the
# question-match feature, every row at ONE commit → results/wave_earns.{json,md}.
#
#   bash benchmarks/wave_earns.sh [COMMIT]            # SEEDS="0 1 2" by default; VARIANTS to narrow it
#
# Rows (seed-major, so a first pass gives every row one seed), all of one size (±1 %): the controls
# conv-only and wave+conv, and the lever a first screen picked (results/wave_earns_probe.md, one seed
# each at b755ac5: of slot_wave layers, a window-norm wave branch, the cross-wave branch and DrQA's
# question attention, only the cross-wave branch lifted a Wave-family reader without question-match,
# 27.6 F1 against 19.5-20.0 for the controls): wave+conv+xwave, the cross-wave branch with the FFN
# narrowed to the common size; each with and without the question-match feature. Attention over the
# question (wave+conv+qattn) would make a HYBRID (its family says so) and is reported as such, not as Wave.
# Run by fair_comparison.sh: clean worktree, autogroup −10, $PAUSE / $STOP between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same driver as the fair comparison (one clean worktree of one commit, one run at a time, pausable),
# writing its own file; the commit defaults to this checkout's HEAD when results/wave_earns.json is new.
export OUT=results/wave_earns
export TITLE="Wave earns its place? Global mixing over local mixing (screen, selection split)"
export VARIANTS=${VARIANTS:-"conv-only-noqm wave+conv+xwave-noqm wave+conv-noqm conv-only wave+conv+xwave wave+conv"}
exec bash benchmarks/fair_comparison.sh "$@"
