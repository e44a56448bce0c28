"""Inference with a saved model folder: loading, prompts, generation and `fila-train generate`."""
