"""``fila-train export``: one merged, self-contained model folder from a training output or checkpoint.

Importing this package pulls in neither DeepSpeed nor the training code: DeepSpeed is imported
only when a ZeRO checkpoint is consolidated.
"""
