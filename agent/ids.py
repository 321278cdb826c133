"""Identifiers of sessions, items, responses and calls: a prefix and 20 hex digits."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"
