"""MLflow: the store, a run per training, the registry and its aliases."""
