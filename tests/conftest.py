"""Shared pytest fixtures: real object-storage servers on loopback (see fixtures_storage.py)."""

from fixtures_storage import *  # noqa: F401,F403
