"""Training drivers: multi-task pre-training (and the pieces fine-tuning reuses: EMA, state, runtime)."""
