#!/usr/bin/env bash
# Atari transfer benchmark for a GPU machine (one GPU, 16 CPU cores), about 10 minutes end to end.
#
# Target: Breakout at difficulty 1, the smaller paddle (BreakoutNoFrameskip-v4 with difficulty=1, rl-baselines3-zoo
# preprocessing and the "atari" PPO settings of configs/ppo.yml): a task that can show transfer. Hub (suite
# atari_needle, configs/hubs/atari_needle.recipe.yml): an A2C agent on Breakout in its default mode and
# difficulty, the relevant expert, among A2C agents on SpaceInvaders, Qbert, Seaquest and RoadRunner. Methods and
# metrics are those of benchmarks/transfer.py: scratch, the Breakout agent fine-tuned whole (heads kept), the
# transfer preset, the paper's Hub-Pathway, the transfer preset on random trunks; equal environment steps, SEEDS
# seeds, runs JOBS at a time (one process, one torch thread each).
#
#   bash benchmarks/transfer_atari_gpu.sh                   # the 10-minute run
#   DRY_RUN=1 bash benchmarks/transfer_atari_gpu.sh         # print the plan, run nothing
#   STEPS=1024 HUB_STEPS=1024 SEEDS=0 JOBS=1 METHODS="scratch hub_pathway" \
#       bash benchmarks/transfer_atari_gpu.sh               # tiny check on a CPU machine
#
# Experts: when HUB_WORKDIR holds <task>/model.zip for the four tasks (from
# `python -m hp_rl.hub build configs/hubs/atari_needle.recipe.yml --workdir hub_build/atari_needle`, 500k A2C
# steps each; the bundled recipe's four games can be copied from hub_build/atari), they are used. The zips are
# about 14 MB each; to carry them to a device machine, keep only the
# weights (6.3 MB each; the trunk reader needs nothing else) in an ignored folder and point HUB_WORKDIR at it:
#   python -c 'import sys, zipfile, pathlib
#   for t in ["breakout", "spaceinvaders", "qbert", "seaquest", "roadrunner"]:
#       d = pathlib.Path("bench_out/atari_hub_carry", t); d.mkdir(parents=True, exist_ok=True)
#       with zipfile.ZipFile(f"hub_build/atari_needle/{t}/model.zip") as a, zipfile.ZipFile(d / "model.zip", "w") as b:
#           [b.writestr(n, a.read(n), zipfile.ZIP_DEFLATED) for n in ("data", "policy.pth")]'
#   then carry ["bench_out/atari_hub_carry", ".whl"] and run with HUB_WORKDIR=bench_out/atari_hub_carry.
# Otherwise the four are pretrained
# here first, in parallel, with HUB_STEPS steps each (a reduced copy of the recipe written to OUT); if that
# phase runs out of HUB_DEADLINE_S, each expert's newest checkpoint is used instead. Either way the hub is
# reported in every run record (paths and sha256 of the expert files).
#
# The machine lacks stable-baselines3, gymnasium and ale-py: fetch wheels once (here, on a machine with pip),
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl stable-baselines3==2.9.2 gymnasium==1.4.0 ale-py==0.12.1 farama-notifications==0.0.6
# and carry .whl: the script installs them into /tmp/site when stable_baselines3 cannot be imported.
#
# Environment variables (defaults in brackets): OUT_DIR [bench_out/transfer_atari], OUT [unset; when set, the
# report, the summary, the PNG, the machine line and a tarball of the run records are copied there], HUB_WORKDIR [hub_build/atari_needle], STEPS [100000 env steps per run], HUB_STEPS
# [100000], SEEDS ["0 1 2"], JOBS [15], METHODS [all], HUB_DEADLINE_S [200], SWEEP_DEADLINE_S [330],
# PYTHON [python3], DRY_RUN [0].
#
# Checked on a 2-core CPU machine only: STEPS=1024 HUB_STEPS=1024 SEEDS=0 JOBS=1 with the in-script expert build
# (five processes at once): every phase ran and the report was written.
# Sizing (an estimate, not a measurement: no GPU machine was lent while this was written): 3 seeds x 5 runs
# (scratch, the Breakout agent, transfer, paper, random trunks) = 15 runs in one wave of 15 processes, after
# the five experts' build (HUB_DEADLINE_S); at
# about 600-900 env steps/s per process (Atari emulation on one core each, network on the shared GPU) a
# 100k-step run takes 2-3 minutes. If a wave is slower, SWEEP_DEADLINE_S stops the sweep: finished runs keep
# their JSON, the report covers them, and a rerun with the same OUT continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT_DIR:-bench_out/transfer_atari}"
HUB_WORKDIR="${HUB_WORKDIR:-hub_build/atari_needle}"
STEPS="${STEPS:-100000}"
HUB_STEPS="${HUB_STEPS:-100000}"
SEEDS="${SEEDS:-0 1 2}"
JOBS="${JOBS:-15}"
METHODS="${METHODS:-scratch single_agent transfer hub_pathway transfer_random}"
HUB_DEADLINE_S="${HUB_DEADLINE_S:-200}"
SWEEP_DEADLINE_S="${SWEEP_DEADLINE_S:-330}"
PYTHON="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
TASKS="breakout spaceinvaders qbert seaquest roadrunner"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT_DIR"
started=$(date +%s)
say() { echo "[transfer_atari $(( $(date +%s) - started ))s] $*"; }

if ! "$PYTHON" -c "import stable_baselines3, gymnasium, ale_py" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        say "installing carried wheels into /tmp/site"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "stable-baselines3, gymnasium or ale-py is missing and no .whl folder was carried (see the header)." >&2
        exit 2
    fi
fi
"$PYTHON" - <<'EOF' | tee "$OUT_DIR/machine.txt"
import os, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU {gpu}, torch {torch.__version__}")
EOF

# 1. The leave-Breakout-out hub: finished experts, or pretrain them here (reduced recipe, in parallel).
recipe="configs/hubs/atari_needle.recipe.yml"
missing=()
for task in $TASKS; do [[ -f "$HUB_WORKDIR/$task/model.zip" ]] || missing+=("$task"); done
if (( ${#missing[@]} )); then
    HUB_WORKDIR="$OUT_DIR/hub"
    recipe="$OUT_DIR/atari_hub_quick.recipe.yml"
    "$PYTHON" - "$HUB_STEPS" "$recipe" <<'EOF'
import sys, yaml
steps, path = int(sys.argv[1]), sys.argv[2]
recipe = yaml.safe_load(open("configs/hubs/atari_needle.recipe.yml"))
recipe["description"] = f"configs/hubs/atari_needle.recipe.yml with {steps} steps per expert (GPU benchmark)."
recipe.update(n_timesteps=steps, save_freq=max(steps // 4, 1000))
yaml.safe_dump(recipe, open(path, "w"), sort_keys=False)
EOF
    say "experts missing in the given workdir (${missing[*]}): pretraining $TASKS for $HUB_STEPS steps each in $HUB_WORKDIR"
    if [[ "$DRY_RUN" != 1 ]]; then
        pids=()
        for task in $TASKS; do
            timeout -k 15 -s INT "$HUB_DEADLINE_S" "$PYTHON" -m hp_rl.hub build "$recipe" --workdir "$HUB_WORKDIR" \
                --only "$task" --no-eval >"$OUT_DIR/hub_build_$task.log" 2>&1 &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid" || say "a hub build process ended with status $? (checkpoints are used)"; done
    fi
fi
say "hub workdir: $HUB_WORKDIR"

# 2. The sweep (resumable: finished runs are skipped), then the report from whatever finished.
# shellcheck disable=SC2086  # SEEDS and METHODS are word lists
args=(--suite atari_needle --recipe "$recipe" --targets breakout_hard --methods $METHODS --single-experts breakout
      --seeds $SEEDS --steps "$STEPS"
      --out "$OUT_DIR" --hub-workdir "$HUB_WORKDIR" --no-build --accept-checkpoints --jobs "$JOBS")
if [[ "$DRY_RUN" == 1 ]]; then
    "$PYTHON" benchmarks/transfer.py "${args[@]}" --dry-run
    exit 0
fi
say "sweep: $STEPS steps per run, seeds $SEEDS, $JOBS at a time"
timeout -k 15 -s TERM "$SWEEP_DEADLINE_S" "$PYTHON" benchmarks/transfer.py "${args[@]}" || say "sweep stopped ($?): reporting the finished runs"
"$PYTHON" benchmarks/transfer.py --report-only --out "$OUT_DIR" --img-dir "$OUT_DIR" >/dev/null
if [[ -n "${OUT:-}" ]]; then
    cp "$OUT_DIR"/transfer.md "$OUT_DIR"/transfer_summary.json "$OUT_DIR"/machine.txt "$OUT_DIR"/*.png "$OUT/" || true
    tar czf "$OUT/transfer_atari_runs.tar.gz" -C "$OUT_DIR" runs
fi
say "done: $OUT_DIR/transfer.md"
