#!/bin/bash
# The one-network student against the hub agent it copies, on the user's path: hp_rl.train's defaults, the
# agents as SB3 zips, then python -m hp_rl.distill with 10% of the hub agent's training steps.
#   bash benchmarks/distill_check.sh control   # CartPole-v1, the bundled control hub, 100k steps, seeds 20-22
#     (a hub of encoders, routed as the paper does: --hub-set preset=paper; the default would route none of them)
#   bash benchmarks/distill_check.sh needle    # MinAtar Breakout, its no-sticky agent among 4 other games, 500k, seed 20
# Results: bench_out/distill/<task>/*/distill.yml; summary: python benchmarks/distill_summary.py
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
task=${1:?control or needle}
out=bench_out/distill/$task
if [ "$task" = control ]; then
  for seed in 20 21 22; do
    [ -f "$out/seed$seed/done" ] && continue
    python -m hp_rl.train --env CartPole-v1 --hub-set preset=paper -n 100000 --seed "$seed" --no-progress \
      --tensorboard-log "$out/seed$seed"
    python -m hp_rl.distill "$(ls -d "$out/seed$seed"/*/ | head -1)" --steps 10000
    touch "$out/seed$seed/done"
  done
else
  zips=bench_out/user_zips  # bare SB3 zips of the bundled MinAtar agents: python benchmarks/user_agents.py
  hub=$zips/breakout_nosticky.zip,$zips/asterix.zip,$zips/freeway.zip,$zips/seaquest.zip,$zips/space_invaders.zip
  for seed in 20; do
    [ -f "$out/seed$seed/done" ] && continue
    python -m hp_rl.train --env MinAtar/Breakout-v1 --hub "$hub" -n 500000 --seed "$seed" --no-progress \
      --tensorboard-log "$out/seed$seed"
    python -m hp_rl.distill "$(ls -d "$out/seed$seed"/*/ | head -1)" --steps 50000
    touch "$out/seed$seed/done"
  done
fi
