"""The one number check every layer uses (model and training configs, the command line, the server).

NaN and inf are never in range (NaN passes no comparison, so a NaN budget would never stop, and a
literal NaN is not valid JSON); booleans are not numbers (``True == 1``); ``integer`` refuses floats.
Callers keep their own messages, which name the option.
"""

from __future__ import annotations

import math
from typing import Any


def in_range(value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
             high_open: bool = False, integer: bool = False) -> bool:
    """Whether ``value`` is a finite number (an int if ``integer``) between ``low`` and ``high``."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    if not math.isfinite(value):
        return False
    above = low < value if low_open else low <= value
    below = value < high if high_open else value <= high
    return above and below
