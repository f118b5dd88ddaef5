#!/usr/bin/env bash
# The one prepared script for a GPU session (docs/gpu-session.md).
#
#   scripts/device_session.sh prepare         here, with registry access: fills .dkcarry/
#   scripts/device_session.sh run [STAGE...]  there (no registry), carry [".dkcarry"]; results under $OUT
#   scripts/device_session.sh collect DIR     here: merge what came back (DIR holds $OUT's files)
#
# Stages of `run`, in the order given (default: preflight teacher headline rest bench profile gputests):
#   preflight  GPU, torch, and a short teacher run that picks train_step (cuda_graph, else compile, else eager)
#   teacher    dk reproduce hinton2015 --scale full --seeds $SEEDS --retrain-teacher --only teacher_1200 (seeds as one batched run;
#              --retrain-teacher: a session trains its teachers, even at smoke scale)
#   headline   the same for student_800_hard and student_800_soft_T20 (3 seeds: the issue's headline cells)
#   rest       every cell, seed 0 (finished runs are reused)
#   bench      benchmarks/run.py --mode full --device cuda (torchdistill from the carried wheel)
#   profile    benchmarks/profile_step.py: host vs device time and kernels per step, teacher and student
#   gputests   pytest -m gpu
# Every stage runs under `timeout -s TERM`: a stopped run checkpoints and the next call resumes it
# (while the machine is warm). The whole command ends by $BUDGET_S seconds (default 540) and
# always packs what it has under $OUT. Knobs: SCALE (full), SEEDS (3), BUDGET_S, TRAIN_STEP (skip the
# preflight choice), STAGE_S_<stage> (a cap per stage, seconds), OVERRIDES (key=value ... for every
# reproduce command; they change the runs' config hashes, so give the same ones every time).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
CARRY=.dkcarry
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
EXP=experiments/hinton2015

die() { echo "device_session: $*" >&2; exit 2; }

prepare() {
    [ -z "$(git status --porcelain --untracked-files=no)" ] || die "commit first: results must name a clean SHA (git status shows changes)"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >>.git/info/exclude
    mkdir -p "$CARRY"
    "$PY" -m darkknowledge.cli data fetch mnist || die "could not fetch MNIST here"
    local cache
    cache=$("$PY" -c "from darkknowledge.data.cache import cache_dir; print(cache_dir())")
    tar -C "$cache" -czf "$CARRY/mnist.tar.gz" mnist
    "$PY" -m pip download -q --no-deps --only-binary=:all: torchdistill==1.1.5 -d "$CARRY" 2>/dev/null ||
        echo "device_session: torchdistill wheel not fetched; the benchmark will report it as not installed"
    git rev-parse HEAD >"$CARRY/GIT_SHA"
    echo "prepared $CARRY ($(du -sh "$CARRY" | cut -f1)): carry [\"$CARRY\"] and run: scripts/device_session.sh run"
    echo "teacher runs brought back earlier (teacher-seed*.tar) travel too when copied into $CARRY/"
}

# ---------------------------------------------------------------- run (on the GPU machine)

stage_limit() {  # seconds a stage may take: its cap, bounded by what is left before the deadline
    local cap=$1 left=$((DEADLINE - $(date +%s) - 45))
    [ "$left" -lt "$cap" ] && cap=$left
    echo "$cap"
}

run_stage() {  # run_stage NAME CAP CMD...: bounded, logged, never fatal
    local name=$1 cap=$2
    shift 2
    local var="STAGE_S_$name"
    cap=${!var:-$cap}
    local t
    t=$(stage_limit "$cap")
    if [ "$t" -lt 20 ]; then
        echo "== $name: skipped, ${t}s left" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (at most ${t}s): $*" | tee -a "$LOG"
    local start=$(date +%s)
    timeout -s TERM -k 30 "$t" "$@" 2>&1 | tee "$LOGS/$name.log" | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $(($(date +%s) - start))s" | tee -a "$LOG"
}

dk() { "$PY" -m darkknowledge.cli "$@"; }
DK=("$PY" -m darkknowledge.cli)  # for `timeout`, which runs commands, not shell functions

preflight() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    if [ -n "${TRAIN_STEP:-}" ]; then
        echo "train_step=$TRAIN_STEP (given)"
        return 0
    fi
    local ts
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device: train_step=eager"
        echo eager >"$WORK/train_step"
        return 0
    fi
    local seeds
    seeds=$(seq -s, 0 $((${SEEDS:-3} - 1)))
    for ts in cuda_graph compile eager; do  # the teacher stage's shape: its seeds as one batched run
        local s=$(date +%s)
        if dk train -c "$EXP/configs/teacher_1200.yaml" --scale full --run-dir "$WORK/preflight-$ts" \
            optim.epochs=2 data.train_size=6000 data.test_size=1000 eval_every=2 checkpoint_every=2 progress=false \
            "replicas.seeds=[$seeds]" "train_step=$ts" >"$LOGS/preflight-$ts.log" 2>&1; then
            echo "train_step=$ts works: ${SEEDS:-3} batched teachers, 2 epochs of 6000 in $(($(date +%s) - s))s (compile included)"
            echo "$ts" >"$WORK/train_step"
            return 0
        fi
        echo "train_step=$ts failed: $(tail -n 3 "$LOGS/preflight-$ts.log")"
    done
    return 1
}

pack() {
    set +e
    local out=${OUT:-/tmp/dk-out}
    mkdir -p "$out"
    [ -f "$EXP/results.csv" ] && cp "$EXP/results.csv" "$out/results.csv"
    cp "$LOG" "$out/session.log"
    local meta=()
    while IFS= read -r f; do meta+=("$f"); done < <(
        find runs -maxdepth 6 \( -name summary.json -o -name config.yaml -o -name metrics.jsonl \) -not -path "*/checkpoints/*" 2>/dev/null
        find benchmarks/results -newer "$WORK/started" -type f 2>/dev/null
        echo "$EXP/README.md"
        find "$EXP" -maxdepth 1 -name 'temperature_sweep_*.png'  # the sweep plot(s) the report drew
    )
    [ -d "$WORK/profile" ] && meta+=("$WORK/profile")
    tar -czf "$out/meta.tar.gz" "${meta[@]}" "$LOGS" 2>/dev/null
    local k d
    for k in 0 1 2 3 4; do  # finished teachers, to carry into the next session (one file each: 16 MiB cap)
        d=$(find "runs/hinton2015/$SCALE/seed$k" -maxdepth 1 -type d -name 'teacher_1200-*' 2>/dev/null | head -n 1)
        [ -n "$d" ] && [ -f "$d/summary.json" ] && [ -f "$d/model.safetensors" ] &&
            tar -cf "$out/teacher-seed$k.tar" "$d/model.safetensors" "$d/summary.json" "$d/config.yaml"
    done
    ls -la "$out"
}

run() {
    SCALE=${SCALE:-full}
    SEEDS=${SEEDS:-3}
    DEADLINE=$(($(date +%s) + ${BUDGET_S:-540}))
    WORK=/tmp/dk-session
    LOGS=$WORK/logs
    LOG=$WORK/session.log
    mkdir -p "$LOGS"
    : >"$LOG"
    rm -f "$WORK/train_step"
    touch "$WORK/started"
    export WORK LOGS TRAIN_STEP SEEDS
    trap pack EXIT
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    [ -f "$CARRY/GIT_SHA" ] && export DARKKNOWLEDGE_GIT_SHA=$(cat "$CARRY/GIT_SHA")
    if [ -f "$CARRY/mnist.tar.gz" ]; then
        export DARKKNOWLEDGE_CACHE=$WORK/cache
        mkdir -p "$DARKKNOWLEDGE_CACHE"
        tar -C "$DARKKNOWLEDGE_CACHE" -xzf "$CARRY/mnist.tar.gz" || die "cannot unpack $CARRY/mnist.tar.gz"
    fi
    local t
    for t in "$CARRY"/teacher-seed*.tar; do [ -f "$t" ] && tar -xf "$t" && echo "restored $t" | tee -a "$LOG"; done
    local whl
    for whl in "$CARRY"/torchdistill-*.whl; do
        [ -f "$whl" ] && "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$whl" &&
            export PYTHONPATH="$PYTHONPATH:$WORK/site"
    done
    local stages=("$@")
    [ ${#stages[@]} -eq 0 ] && stages=(preflight teacher headline rest bench profile gputests)
    local ts=${TRAIN_STEP:-eager}
    local extra=()
    read -r -a extra <<<"${OVERRIDES:-}"
    local s
    for s in "${stages[@]}"; do
        [ -f "$WORK/train_step" ] && ts=$(cat "$WORK/train_step")
        case $s in
        preflight) run_stage preflight 120 "$0" _preflight ;;
        teacher) run_stage teacher 600 "${DK[@]}" reproduce hinton2015 "train_step=$ts" "${extra[@]}" --scale "$SCALE" --seeds "$SEEDS" --retrain-teacher --only teacher_1200 ;;
        headline) run_stage headline 600 "${DK[@]}" reproduce hinton2015 "train_step=$ts" "${extra[@]}" --scale "$SCALE" --seeds "$SEEDS" --retrain-teacher --only student_800_hard student_800_soft_T20 ;;
        rest) run_stage rest 600 "${DK[@]}" reproduce hinton2015 "train_step=$ts" "${extra[@]}" --scale "$SCALE" --retrain-teacher ;;
        bench) run_stage bench 300 "$PY" benchmarks/run.py --mode "$([ "$SCALE" = full ] && echo full || echo smoke)" --torchdistill-python "$PY" ;;
        profile) run_stage profile 150 bash -c 'for c in teacher_1200 student; do "$0" benchmarks/profile_step.py --cell "$c" --out "$1" "train_step=$2" || exit; done' "$PY" "$WORK/profile" "$ts" ;;
        gputests) run_stage gputests 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests ;;
        *) echo "== unknown stage $s (choose preflight teacher headline rest bench profile gputests)" | tee -a "$LOG" ;;
        esac
    done
}

# ---------------------------------------------------------------- collect (here, afterwards)

collect() {
    local dir=${1:-}
    [ -d "$dir" ] || die "collect needs the folder holding what came back (results.csv, meta.tar.gz, ...)"
    [ -f "$dir/results.csv" ] || die "$dir/results.csv is missing"
    "$PY" - "$dir/results.csv" "$EXP/results.csv" <<'EOF'
import sys
from darkknowledge.reproduce.results import append_results, read_results
n = append_results(sys.argv[2], read_results(sys.argv[1]))  # only measurements not already there
print(f"{n} new rows appended to {sys.argv[2]}")
EOF
    mkdir -p runs/device "$CARRY"
    if [ -f "$dir/meta.tar.gz" ]; then
        tar -C runs/device -xzf "$dir/meta.tar.gz" && echo "run summaries and logs in runs/device/"
        if [ -d runs/device/benchmarks/results ]; then
            cp runs/device/benchmarks/results/* benchmarks/results/ && echo "benchmark results copied to benchmarks/results/ (then: benchmarks/report.py)"
        fi
    fi
    local t
    for t in "$dir"/teacher-seed*.tar; do [ -f "$t" ] && cp "$t" "$CARRY/" && echo "kept $t in $CARRY/ for the next session"; done
    dk reproduce hinton2015 --report-only
}

case ${1:-} in
_preflight) preflight ;;  # run's own stage, under its timeout
prepare) prepare ;;
run) shift; run "$@" ;;
collect) shift; collect "$@" ;;
*) die "usage: scripts/device_session.sh prepare | run [STAGE...] | collect DIR" ;;
esac
