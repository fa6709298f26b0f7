#!/usr/bin/env bash
# The attention family's recipe sweep (the fair-comparison issue, point 4): learning rate and warmup of
# QA fine-tuning and of masked-LM pretraining, at screen budgets, chosen on the SELECTION split
# (trained on JaQuAD train, scored on JaQuAD dev; JSQuAD dev is never used to choose). The chosen
# setting is then recorded per family in the standard preset (COMPARE_PRESETS["standard"]["family"])
# and used by results/fair_standard.
#
#   ATTN=transformer+conv bash benchmarks/fair_sweep.sh [COMMIT]    # the best attention-family screen row
#
# Like benchmarks/fair_comparison.sh: one clean worktree of one commit, one run at a time, owning the
# CPU (autogroup nice -10), pausable ($PAUSE) and stoppable ($STOP) between runs, continuing across
# sessions (rows already in an output file are skipped).
#   - QA sweep  → results/fair_sweep_qa.{json,md}: scratch QA, 8 minutes, seed 0; the screen's own row
#     setting (lr 1e-3, warmup 0.05) is run again here, at this commit, beside three others.
#   - MLM sweep → results/fair_sweep_mlm.{json,md}: 10 minutes of masked LM then 10 of QA (the standard
#     recipe's shape at half length), seed 0, pretraining lr / warmup varied, QA at the standard recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ATTN=${ATTN:-transformer+conv}
PAUSE=${PAUSE:-/tmp/nami-pause}
STOP=${STOP:-/tmp/nami-stop}
COMMIT=${1:-$(git rev-parse HEAD)}
TREE=${TREE:-/tmp/nami-sweep-$COMMIT}
# The worktree lies elsewhere (/tmp): the data is this checkout's (../shared/data) unless NAMI_DATA says.
export NAMI_DATA=${NAMI_DATA:-$(cd "$REPO/.." && pwd)/shared/data}
DATA=$NAMI_DATA
[ -d "$TREE" ] || git worktree add --detach "$TREE" "$COMMIT"
mkdir -p "$TREE/results"
for f in results/fair_sweep_qa results/fair_sweep_mlm; do
  [ -f "$f.json" ] && [ ! -f "$TREE/$f.json" ] && cp "$f.json" "$f.md" "$TREE/results/"
done
echo -10 > /proc/self/autogroup 2>/dev/null || echo "note: could not raise this group's priority (not root?)"
export PYTHONPATH="$TREE/src"
cd "$TREE"
# The variant's own options (nami ablate --help lists the table), plus the swept ones.
case "$ATTN" in
  transformer+conv) BASE='branches=["conv"]' ;;
  transformer+rope) BASE='attention_rope=true' ;;
  transformer+rope+conv) BASE='attention_rope=true,branches=["conv"]' ;;
  *) echo "ATTN=$ATTN: add its options to this script" >&2; exit 2 ;;
esac
run() {  # run OUT TITLE VARIANT-SPEC [ablate options...]
  local out=$1 title=$2 spec=$3; shift 3
  while [ -f "$PAUSE" ]; do sleep 5; done
  [ -f "$STOP" ] && { echo "stopped ($STOP exists)"; exit 0; }
  python3 -m nami ablate --variant "$spec" --seeds 0 --title "$title" --out "$out" "$@"
  cp "$out.json" "$out.md" "$REPO/results/"
}
QA_TITLE="Attention-family recipe sweep: QA fine-tuning (screen, selection split)"
for setting in "lr1e-3:finetune.lr=0.001" "lr5e-4:finetune.lr=0.0005" "lr2e-3:finetune.lr=0.002" \
               "warm0.1:finetune.warmup=0.1"; do
  name=${setting%%:*}; options=${setting#*:}
  run results/fair_sweep_qa "$QA_TITLE" "$ATTN-$name=transformer:$BASE,$options"
done
MLM_TITLE="Attention-family recipe sweep: masked-LM pretraining (10 + 10 min, selection split)"
for setting in "plr5e-4:pretrain.lr=0.0005" "plr1e-3:pretrain.lr=0.001" "plr2e-3:pretrain.lr=0.002" \
               "pwarm0.1:pretrain.warmup=0.1"; do
  name=${setting%%:*}; options=${setting#*:}
  run results/fair_sweep_mlm "$MLM_TITLE" "$ATTN-$name=transformer:$BASE,$options" \
    --preset standard --pretrain-minutes 10 --minutes 10 \
    --train-data "$DATA/jaquad/train" --eval-data "$DATA/jaquad/dev"
done
echo "sweep complete: $REPO/results/fair_sweep_qa.md, $REPO/results/fair_sweep_mlm.md"
