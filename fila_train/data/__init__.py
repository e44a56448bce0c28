"""Data: annotation files, mixtures, datasets and collation."""
