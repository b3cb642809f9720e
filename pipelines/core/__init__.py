"""Shared by every part: params.yaml, the stores, the per-candidate file layout, atomic I/O, errors."""
