"""Pruning and measuring a model: dependency groups, importance, policies, structural pruning,
budget solves, training and evaluation loops, checkpoints, sensitivity, and ``measure/`` (FLOPs,
cost model, latency, ONNX timing). Takes a model and batches, returns a model or a number; knows
nothing of Optuna or of dataset files, so it is testable alone on a tiny network. The only layer
that imports Torch-Pruning."""
