"""Processing: records and chat messages -> model inputs (templates, tokenization, images), one processor."""
