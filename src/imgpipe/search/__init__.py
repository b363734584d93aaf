"""Search over settings across trials: Optuna proposes, prunes and stores; trials train with the one training loop."""
