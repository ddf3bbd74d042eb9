"""Inspect a fit: ArviZ export and plots (the package's modules follow in the next commit)."""
