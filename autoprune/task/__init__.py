"""What a command starts from: the config (defaults, TOML, flags), dataset sources, the train /
search-val / test splits, model factories, the dense baseline, and the pruner, calibration and
latency meter a config describes. Imports core, never Optuna."""
