"""What every layer stands on: errors, paths, the YAML reader, option rules, run folders, runners, archives, the
console. It imports nothing else of hp_rl."""
