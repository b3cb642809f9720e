"""Benchmarks of this project: `bench.pipeline` (DVC + papermill) and `bench/serve.py` (serving)."""
