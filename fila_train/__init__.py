"""fila_train."""
