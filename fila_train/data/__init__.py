"""Data: annotation files, templates, per-turn tokenization, datasets and collation."""
