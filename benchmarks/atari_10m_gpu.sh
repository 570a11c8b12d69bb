#!/usr/bin/env bash
# The Atari suites of docs/results/atari100k.md at 10M frames (2.5M agent steps per run) on a GPU machine with
# 16 CPU cores, in one go; resumable (finished runs keep their JSON and are skipped when it runs again).
#
#   bash benchmarks/atari_10m_gpu.sh                 # the full sweep (expected duration below)
#   DRY_RUN=1 bash benchmarks/atari_10m_gpu.sh       # print both plans, run nothing
#   STEPS=1024 SEEDS=20 JOBS=2 bash benchmarks/atari_10m_gpu.sh   # a check of every phase on a CPU machine
#
# 1. Reincarnation (suite atari_reincarnation): the 1M-step PPO Breakout agent and the Pong and SpaceInvaders
#    agents of configs/hubs/atari_reincarnation.recipe.yml, given as zips by path, on ALE/Breakout-v5 (sticky
#    actions) and on BreakoutNoFrameskip-v4 at difficulty 1. Methods: scratch, the Breakout agent fine-tuned
#    alone, hp_rl.train's defaults with the zips (user_zips), the paper's configuration on the same zips.
# 2. The headline command (suite atari): BreakoutNoFrameskip-v4 with hp_rl.train's defaults (--hub auto, the
#    bundled Atari hub) against --hub none.
# The agents: HUB_WORKDIR holding breakout/, pong/ and spaceinvaders/ model.zip (copy hub_build/atari_reincarnation
# from the machine that built them: about 14 MB each), or they are built here first (BUILD=1: the recipe as it
# is, the three in parallel; about 25 minutes at ~700 steps/s for the 1M-step Breakout agent).
#
# Expected duration (an estimate: the sweep has not run on a GPU): 2 targets x 4 methods + 2 headline methods =
# 10 runs per seed, 50 runs for seeds 20-24, 15 at a time in 4 waves. At 400-900 env steps/s per process (Atari
# emulation on one core each, networks on the shared GPU; hub runs are the slower ones) a 2.5M-step run takes
# 50-105 minutes, so the sweep takes about 4-7 hours. Environment variables (defaults in brackets): OUT_DIR
# [bench_out/atari_10m], HUB_WORKDIR [hub_build/atari_reincarnation], STEPS [2500000], SEEDS ["20 21 22 23 24"],
# JOBS [15], BUILD [0], PYTHON [python3], DRY_RUN [0].
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-bench_out/atari_10m}"
HUB_WORKDIR="${HUB_WORKDIR:-hub_build/atari_reincarnation}"
STEPS="${STEPS:-2500000}"
SEEDS="${SEEDS:-20 21 22 23 24}"
JOBS="${JOBS:-15}"
BUILD="${BUILD:-0}"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT_DIR"
started=$(date +%s)
say() { echo "[atari_10m $(( $(date +%s) - started ))s] $*"; }

missing=()
for task in breakout pong spaceinvaders; do [[ -f "$HUB_WORKDIR/$task/model.zip" ]] || missing+=("$task"); done
if (( ${#missing[@]} )); then
    if [[ "$BUILD" != 1 && "$DRY_RUN" != 1 ]]; then
        echo "The agents ${missing[*]} are not in $HUB_WORKDIR: copy them there, or run with BUILD=1." >&2
        exit 2
    fi
    say "building ${missing[*]} in $HUB_WORKDIR"
    if [[ "$DRY_RUN" != 1 ]]; then
        pids=()
        for task in "${missing[@]}"; do
            "$PYTHON" -m hp_rl.hub build configs/hubs/atari_reincarnation.recipe.yml --workdir "$HUB_WORKDIR" \
                --only "$task" >"$OUT_DIR/build_$task.log" 2>&1 &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
    fi
fi

# shellcheck disable=SC2086  # SEEDS is a word list
common=(--seeds $SEEDS --steps "$STEPS" --out "$OUT_DIR" --jobs "$JOBS" --threads 1)
reincarnation=(--suite atari_reincarnation --targets breakout_v5 breakout_hard --hub-workdir "$HUB_WORKDIR"
               --no-build --methods scratch single_agent user_zips cli_paper --single-experts breakout "${common[@]}")
headline=(--suite atari --targets breakout --methods cli_default scratch "${common[@]}")
if [[ "$DRY_RUN" == 1 ]]; then
    "$PYTHON" benchmarks/transfer.py "${reincarnation[@]}" --dry-run
    "$PYTHON" benchmarks/transfer.py "${headline[@]}" --dry-run
    exit 0
fi
say "reincarnation: $STEPS steps per run, seeds $SEEDS, $JOBS at a time"
"$PYTHON" benchmarks/transfer.py "${reincarnation[@]}"
say "the headline command"
"$PYTHON" benchmarks/transfer.py "${headline[@]}"
"$PYTHON" benchmarks/transfer_report.py "$OUT_DIR" --json "$OUT_DIR/atari_10m_summary.json" --img-dir "$OUT_DIR" \
    --prefix atari_10m --markdown "$OUT_DIR/atari_10m.md"
say "done: $OUT_DIR/atari_10m.md"
