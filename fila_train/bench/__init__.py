"""``fila-train bench``: training-step throughput, MFU and memory of named configurations, and the
data pipeline against a reference implementation. ``mfu`` is also used by the training logs."""
