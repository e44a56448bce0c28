"""FILA's ablation: the same recipe for the crop-only anyres encoder and FILA's fusion variants, several seeds,
scored on the fragmentation probe (``fila-train ablate``, ``scripts/ablate.sh``)."""
