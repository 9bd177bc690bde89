"""Training procedures, one module per model family: `train(config, ctx, run) -> dict`."""
