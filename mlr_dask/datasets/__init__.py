"""Synthetic data generators (seeded, offline)."""
