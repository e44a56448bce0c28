"""Self-contained demo assets: a synthetic document-image dataset and a tiny local tokenizer.

Nothing here downloads anything, so the full two-stage pipeline can be exercised offline.
"""
