"""Identifiers of sessions, items, responses and calls: a prefix and 20 hex digits."""

from __future__ import annotations

import os


def new_id(prefix: str) -> str:
    """80 random bits from the OS, as ``uuid4`` draws them (without building a UUID: three of
    these a frame, 2 us each)."""
    return f"{prefix}_{os.urandom(10).hex()}"
