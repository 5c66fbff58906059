"""Parley: shared runtime for the voice agent services."""
