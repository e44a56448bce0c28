"""Small shared helpers: atomic files, distributed rank queries, logging set-up."""
