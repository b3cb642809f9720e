"""Exactly what the bento carries, and nothing from training: it imports nothing outside itself."""
