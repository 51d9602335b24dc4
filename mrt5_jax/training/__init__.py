"""The objective, one optimizer step, the project trainer and its optimizers and summaries."""
