"""The throughput benchmark: Hub-Pathway against plain Stable-Baselines3 in steps per second, in one process run
(``hp-rl bench throughput``; the command line and what it measures: :mod:`hp_rl.bench.throughput.cli`)."""
