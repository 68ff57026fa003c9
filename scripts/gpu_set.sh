#!/usr/bin/env bash
# Train a set of models (EDM teacher, CD, ECT, iCT, CT) on one GPU in a few minutes, export float16
# EMA weights with their two-step tau, and evaluate them on 10k samples (MNIST: FD-MNIST; CIFAR-10:
# FID). The commands are the CPU ones (checkpoints/README.md) with --device cuda, the 'small' preset
# and GPU-minute budgets; SCALE multiplies every budget.
#
#   bash scripts/gpu_set.sh OUTDIR                          # MNIST, on a GPU machine, from the repository root
#   bash scripts/gpu_set.sh OUTDIR 4                        # each training run on 4 GPUs (torchrun, DDP)
#   DATA=cifar10 CONSISTENCY_TRAINING=0 bash scripts/gpu_set.sh OUTDIR   # CIFAR-10: teacher, then ECT and CD
#   DEVICE=cpu PRESET=fast SCALE=0.02 N_EVAL=200 bash scripts/gpu_set.sh /tmp/x   # a smoke test on a CPU
#   CONSISTENCY_TRAINING=0 bash scripts/gpu_set.sh OUTDIR   # only the teacher, CD and ECT
#
# The teacher, iCT and CT train at the same time (one GPU is not saturated by one small U-Net),
# then CD and ECT start from the teacher.
#
# NPROC (optional second argument, default 1): processes per training run. With NPROC > 1 each run is
# `torchrun --standalone --nproc_per_node NPROC -m cmedu train ...` (one process per GPU, DDP over NCCL); BATCH
# stays the global batch (NPROC must divide it), so the runs compute what one GPU would, faster. The budgets are
# the same minutes: more GPUs train more steps in them.
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_set.sh OUTDIR [NPROC]}
NPROC=${2:-1}
DATA=${DATA:-mnist}; DATA_ROOT=${DATA_ROOT:+--data-root $DATA_ROOT}; DEVICE=${DEVICE:-cuda}; PRESET=${PRESET:-small}; SCALE=${SCALE:-1}; N_EVAL=${N_EVAL:-10000}
BATCH=${BATCH:-256}; TAU_N=${TAU_N:-2000}; THREADS=${THREADS:-2}; CONSISTENCY_TRAINING=${CONSISTENCY_TRAINING:-1}
RUNS=${RUNS:-runs/gpu}
PY=${PY:-python3}
m() { $PY -c "print(round($1 * $SCALE, 3))"; }
if [ "$NPROC" -gt 1 ]; then
  LAUNCH="$PY -m torch.distributed.run --standalone --nproc_per_node $NPROC -m cmedu"  # --standalone: a free port per run
else
  LAUNCH="$PY -m cmedu"
fi
T="$LAUNCH train --data $DATA $DATA_ROOT --device $DEVICE --preset $PRESET --batch-size $BATCH --threads $THREADS --quiet"
mkdir -p "$OUT" "$RUNS"
log() { echo "[$(date +%T)] $*"; }

log "teacher (and iCT, CT)"
$T --method edm --minutes "$(m 3.5)" --out "$RUNS/$DATA-edm" > "$RUNS/edm.log" 2>&1 &
P_EDM=$!
CT_PIDS=""; NAMES="edm cd ect"
if [ "$CONSISTENCY_TRAINING" = 1 ]; then
  $T --method ict --minutes "$(m 5.3)" --out "$RUNS/$DATA-ict" > "$RUNS/ict.log" 2>&1 &
  CT_PIDS="$CT_PIDS $!"
  $T --method ct --minutes "$(m 5.3)" --out "$RUNS/$DATA-ct" > "$RUNS/ct.log" 2>&1 &
  CT_PIDS="$CT_PIDS $!"
  NAMES="$NAMES ict ct"
fi
wait $P_EDM || log "teacher failed (see $RUNS/edm.log)"
log "CD and ECT from the teacher"
$T --method cd --teacher "$RUNS/$DATA-edm" --minutes "$(m 1.7)" --out "$RUNS/$DATA-cd" > "$RUNS/cd.log" 2>&1 &
P_CD=$!
$T --method ect --teacher "$RUNS/$DATA-edm" --minutes "$(m 1.7)" --out "$RUNS/$DATA-ect" > "$RUNS/ect.log" 2>&1 &
P_ECT=$!
for p in $CT_PIDS $P_CD $P_ECT; do wait $p || log "a training run failed (see $RUNS/*.log)"; done
log "export and evaluate"
for name in $NAMES; do
  (
    $PY -m cmedu export --ckpt "$RUNS/$DATA-$name" --out "$OUT/${DATA}_$name.pt" --device "$DEVICE" --tau-n "$TAU_N" $DATA_ROOT
    if [ "$name" = edm ]; then nfe="35"; else nfe="1 2"; fi
    $PY -m cmedu eval --ckpt "$OUT/${DATA}_$name.pt" --nfe $nfe --n "$N_EVAL" --device "$DEVICE" \
      --batch-size 1000 --json "$RUNS/eval_$name.json" $DATA_ROOT
  ) > "$RUNS/export_$name.log" 2>&1 &
done
wait
tail -n 3 "$RUNS"/*.log
tar czf "$OUT/${DATA}_gpu_logs.tar.gz" -C "$RUNS" $(cd "$RUNS" && ls *.log *.json)
log "done"
