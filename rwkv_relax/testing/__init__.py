"""Helpers for tests and tools: random checkpoints in the real file formats, reference runs."""
