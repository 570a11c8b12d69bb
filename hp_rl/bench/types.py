"""Types shared by the benchmark library."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["Expert"]

# A source expert: an SB3 run's model.zip (pretrained by the sweep) or an exported hub's manifest entry.
Expert = Path | dict[str, Any]
