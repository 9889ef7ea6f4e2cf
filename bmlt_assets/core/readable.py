"""Numbers as a reader wants them: the one formatter of the report, its tables, the terminal and
the Dagster metadata, so that no surface prints ``-5298.9491`` while another prints ``-5,299``.

A measured quantity gets a few significant digits (:data:`DIGITS` in tables, :data:`PROSE` in
sentences), and is whole, with thousands separators, from 10**(digits - 1) up (1,000 in tables):
no exponent for the magnitudes a report holds. Counts are ints and print whole. Configured values (a fee of 10 bps,
a threshold of 0.6) are not measurements: they print as written, with ``:g``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

DIGITS = 4  # significant digits in tables and metadata
PROSE = 3  # significant digits in sentences (headline, warnings, verdict)
_SMALLEST_PLAIN = 1e-6  # below this, an exponent reads better than a run of zeros


def rounded(value: float, digits: int = DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (NaN, infinities and 0 unchanged)."""
    if not math.isfinite(value) or value == 0:
        return float(value)
    return float(f"{value:.{digits - 1}e}")


def number(value: float | int | None, digits: int = DIGITS, sign: bool = False) -> str:
    """``value`` for a reader: an int whole with thousands separators; a float to ``digits``
    significant digits, or whole (rounded to an integer) from 10**(digits - 1) up; NaN and
    None (not measured) as ``n/a``. ``sign``: a leading + on positives (for differences and margins)."""
    plus = "+" if sign else ""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return f"{int(value):{plus},}"
    if not isinstance(value, Real):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return ("-" if value < 0 else plus) + "∞"
    if abs(value) >= 10 ** (digits - 1) - 0.5:  # whole from 1,000 up: -5,299, not -5,300 or -5298.9491
        return f"{value:{plus},.0f}"
    value = rounded(value, digits)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if abs(value) < _SMALLEST_PLAIN:
        return f"{value:{plus}.{digits - 1}e}"
    return f"{value:{plus}.{digits - 1 - magnitude}f}"


def interval(low: float | None, high: float | None, digits: int = DIGITS) -> str:
    """A confidence interval, ``[low, high]``."""
    return f"[{number(low, digits)}, {number(high, digits)}]"
