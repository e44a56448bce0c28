"""Training: arguments, tunable parts, the trainer and the entry point."""
