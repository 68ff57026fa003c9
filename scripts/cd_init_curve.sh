#!/usr/bin/env bash
# FD-MNIST of CD over the same wall time, started from the teacher's weights vs from scratch.
#
#   bash scripts/cd_init_curve.sh [OUT]       (default OUT=runs/cd-init; about ROUNDS x CHUNK minutes, two cores)
#
# Both runs train side by side, one thread each, in ROUNDS rounds of CHUNK minutes (each round resumes the
# run folder); after every round the EMA weights are scored by `python -m cmedu eval --nfe 1 2 --n N`.
# Constant learning rate (--no-cosine-decay), so a point mid-curve is not penalised by an unfinished schedule.
# The teacher-initialised run uses the student recipe (lr 1e-4, no warm-up); the run from scratch gets the
# from-scratch image recipe (lr 5e-4, 200 warm-up steps), as the teacher, iCT and CT do.
# The curve lands in OUT/curve.json and is printed as a table.
set -euo pipefail
OUT=${1:-runs/cd-init}
TEACHER=${TEACHER:-checkpoints/mnist_edm.pt}
CHUNK=${CHUNK:-3}
ROUNDS=${ROUNDS:-6}
N=${N:-500}
mkdir -p "$OUT"
for init in teacher scratch; do
  extra=()
  [ "$init" = scratch ] && extra=(--from-scratch --lr 5e-4 --warmup 200)
  (
    for i in $(seq 1 "$ROUNDS"); do
      python -m cmedu train --data mnist --method cd --teacher "$TEACHER" --steps 100000 --no-cosine-decay \
        --minutes "$CHUNK" --threads 1 --quiet --out "$OUT/$init" "${extra[@]}" > "$OUT/$init-train-$i.log"
      python -m cmedu eval --ckpt "$OUT/$init" --nfe 1 2 --n "$N" --threads 1 --json "$OUT/$init-$i.json" \
        > "$OUT/$init-eval-$i.log"
      python -c "import json, sys; from cmedu.checkpoints import load_checkpoint
s = load_checkpoint(sys.argv[1]); p = sys.argv[2]; r = json.load(open(p))
r['wall_minutes'] = s['config']['extra']['wall_seconds'] / 60; r['machine'] = s['config']['extra']['machine']
json.dump(r, open(p, 'w'), indent=1)" \
        "$OUT/$init" "$OUT/$init-$i.json"
    done
  ) &
done
wait
python - "$OUT" "$ROUNDS" "$N" "$CHUNK" "$TEACHER" <<'PY'
import json, sys
out, rounds, n, chunk, teacher = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
curve = {init: [json.load(open(f"{out}/{init}-{i}.json")) for i in range(1, rounds + 1)] for init in ("teacher", "scratch")}
rows = {init: [dict(minutes=round(r["wall_minutes"], 2), step=r["step"], fd_1=round(r["nfe"]["1"]["fd_mnist"], 3),
                    fd_2=round(r["nfe"]["2"]["fd_mnist"], 3)) for r in runs] for init, runs in curve.items()}
meta = dict(command=f"ROUNDS={rounds} CHUNK={chunk:g} N={n} TEACHER={teacher} bash scripts/cd_init_curve.sh {out}",
            teacher_checkpoint=teacher, n_samples=n, chunk_minutes=chunk, machine=curve["teacher"][0]["machine"],
            fd="FD-MNIST of the EMA weights, 1 and 2 steps (default taus), vs the 10,000 test digits")
json.dump(dict(meta, **rows), open(f"{out}/curve.json", "w"), indent=1)
print(f"CD from the teacher vs from scratch: FD-MNIST (n = {n} samples vs the 10,000 test digits)")
print(f"{'round':>5} | {'from the teacher: min':>21} {'step':>5} {'1 step':>7} {'2 steps':>7} | "
      f"{'from scratch: min':>17} {'step':>5} {'1 step':>7} {'2 steps':>7}")
for i, (a, b) in enumerate(zip(rows["teacher"], rows["scratch"]), 1):
    print(f"{i:>5} | {a['minutes']:>21} {a['step']:>5} {a['fd_1']:>7.2f} {a['fd_2']:>7.2f} | "
          f"{b['minutes']:>17} {b['step']:>5} {b['fd_1']:>7.2f} {b['fd_2']:>7.2f}")
PY
