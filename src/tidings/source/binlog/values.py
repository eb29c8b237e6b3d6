"""Column value formats: binary row image -> JSON-ready Python values.

Each `read_*` helper takes the event bytes and the value's offset and returns the
value; the caller knows the value's size from the column metadata (see `rows.py`,
which inlines the simple cases). Formats follow MySQL's `Field_*::unpack` and
`my_time.cc`: temporal types come out as ISO 8601 strings, DECIMAL as an exact
string, binary data as base64.
"""

from __future__ import annotations

import struct
from binascii import b2a_base64

from tidings.source.binlog.errors import BinlogError

_FLOAT = struct.Struct("<f")

# bytes used by 0..9 leftover decimal digits (strings/decimal.c: dig2bytes)
DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_POW10 = tuple(10**i for i in range(10))

DATETIMEF_INT_OFS = 0x8000000000
TIMEF_INT_OFS = 0x800000
TIMEF_OFS = 0x800000000000


def base64(data: bytes) -> str:
    return b2a_base64(data, newline=False).decode("ascii")


def float32(value: float) -> float:
    """The shortest decimal that reads back as the same 4-byte float (1.1, not 1.100000023)."""
    raw = _FLOAT.pack(value)
    for digits in (6, 7, 8):
        short = float(f"{value:.{digits}g}")
        if _FLOAT.pack(short) == raw:
            return short
    return float(f"{value:.9g}")


# -- DECIMAL --------------------------------------------------------------------------------
def decimal_size(precision: int, scale: int) -> int:
    intg = precision - scale
    return (intg // 9) * 4 + DIG2BYTES[intg % 9] + (scale // 9) * 4 + DIG2BYTES[scale % 9]


def read_decimal(buf: bytes, pos: int, precision: int, scale: int) -> str:
    """MySQL packed DECIMAL (strings/decimal.c bin2decimal) as an exact string: "-0.010"."""
    intg = precision - scale
    size = decimal_size(precision, scale)
    raw = buf[pos : pos + size]
    if len(raw) != size or size == 0:
        raise BinlogError("truncated DECIMAL value")
    # the sign is the top bit (set for positive); negatives store every byte inverted
    negative = not raw[0] & 0x80
    mask = 0xFF if negative else 0
    data = bytes(b ^ mask for b in raw) if negative else raw
    data = bytes((data[0] ^ 0x80,)) + data[1:]
    p = 0
    head = DIG2BYTES[intg % 9]
    int_value = int.from_bytes(data[:head], "big")
    p = head
    for _ in range(intg // 9):
        int_value = int_value * 1_000_000_000 + int.from_bytes(data[p : p + 4], "big")
        p += 4
    frac = ""
    if scale:
        parts = []
        for _ in range(scale // 9):
            parts.append(f"{int.from_bytes(data[p : p + 4], 'big'):09d}")
            p += 4
        rest = scale % 9
        if rest:
            tail = int.from_bytes(data[p : p + DIG2BYTES[rest]], "big")
            parts.append(f"{tail:0{rest}d}")
        frac = "." + "".join(parts)
    text = f"{int_value}{frac}"
    if negative and (int_value or frac.strip(".0")):
        return "-" + text
    return text


# -- dates and times ------------------------------------------------------------------------
def frac_size(fsp: int) -> int:
    return (fsp + 1) // 2


def _usec(usec: int, fsp: int) -> str:
    return f".{usec:06d}"[: fsp + 1] if fsp else ""


def read_datetime(buf: bytes, pos: int) -> str:
    """Old DATETIME (type 12): YYYYMMDDhhmmss as a little-endian uint64."""
    v = int.from_bytes(buf[pos : pos + 8], "little")
    d, t = divmod(v, 1_000_000)
    return (
        f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}"
        f"T{t // 10000:02d}:{t // 100 % 100:02d}:{t % 100:02d}"
    )


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def read_timestamp(buf: bytes, pos: int) -> str:
    """Old TIMESTAMP (type 7): seconds since the epoch, little-endian; UTC with "Z"."""
    seconds = int.from_bytes(buf[pos : pos + 4], "little")
    if seconds == 0:
        return "0000-00-00T00:00:00Z"
    days, rem = divmod(seconds, 86400)
    y, m, d = civil_from_days(days)
    return f"{y:04d}-{m:02d}-{d:02d}T{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}Z"


def read_time2(buf: bytes, pos: int, fsp: int) -> str:
    """TIME2 (my_time.cc my_time_packed_from_binary) as "-838:59:59.000000"."""
    intpart = int.from_bytes(buf[pos : pos + 3], "big") - TIMEF_INT_OFS
    usec = 0
    if fsp:
        if fsp <= 4:
            width = 1 if fsp <= 2 else 2
            frac = int.from_bytes(buf[pos + 3 : pos + 3 + width], "big")
            if intpart < 0 and frac:
                intpart += 1
                frac -= 1 << (8 * width)
            usec = frac * (10000 if width == 1 else 100)
            packed = (intpart << 24) + usec
        else:
            packed = int.from_bytes(buf[pos : pos + 6], "big") - TIMEF_OFS
    else:
        packed = intpart << 24
    sign = ""
    if packed < 0:
        sign = "-"
        packed = -packed
    hms = packed >> 24
    usec = packed & 0xFFFFFF
    text = f"{sign}{hms >> 12 & 1023:02d}:{hms >> 6 & 63:02d}:{hms & 63:02d}"
    return text + _usec(usec, fsp)


def read_time(buf: bytes, pos: int) -> str:
    """Old TIME (type 11): +-HHMMSS as a signed 3-byte integer."""
    v = int.from_bytes(buf[pos : pos + 3], "little", signed=True)
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{v // 10000:02d}:{v // 100 % 100:02d}:{v % 100:02d}"


def set_labels(bits: int, labels: tuple[str, ...]) -> list[str]:
    return [label for i, label in enumerate(labels) if bits >> i & 1]


# -- cached pieces for the compiled row decoders ---------------------------------------------
# Formatting a datetime costs ~1 us of f-string work; rows of one table mostly share the
# date, hour and minute, so the decoders cache the "YYYY-MM-DDTHH:MM:" prefix and only
# append seconds and fractions. Each cache is cleared whole when it grows past _CACHE_MAX.
_CACHE_MAX = 1 << 16
TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))
DATETIME_PREFIX: dict[int, str] = {}
EPOCH_PREFIX: dict[int, str] = {}
DATES: dict[int, str] = {}


def datetime2_prefix(minutes: int) -> str:
    """Prefix for a DATETIME2 whose packed value without seconds (>> 6) is `minutes`."""
    packed = minutes - (DATETIMEF_INT_OFS >> 6)
    if packed < 0:
        raise BinlogError("negative DATETIME2 value")
    ymd = packed >> 11
    ym = ymd >> 5
    text = f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 31:02d}T{packed >> 6 & 31:02d}:{packed & 63:02d}:"
    if len(DATETIME_PREFIX) >= _CACHE_MAX:
        DATETIME_PREFIX.clear()
    DATETIME_PREFIX[minutes] = text
    return text


def epoch_prefix(minutes: int) -> str:
    """Prefix for a TIMESTAMP `minutes` whole minutes after the epoch (UTC)."""
    days, rem = divmod(minutes, 1440)
    y, m, d = civil_from_days(days)
    text = f"{y:04d}-{m:02d}-{d:02d}T{rem // 60:02d}:{rem % 60:02d}:"
    if len(EPOCH_PREFIX) >= _CACHE_MAX:
        EPOCH_PREFIX.clear()
    EPOCH_PREFIX[minutes] = text
    return text


def date_text(packed: int) -> str:
    """A DATE from its 3-byte little-endian value."""
    text = f"{packed >> 9:04d}-{packed >> 5 & 15:02d}-{packed & 31:02d}"
    if len(DATES) >= _CACHE_MAX:
        DATES.clear()
    DATES[packed] = text
    return text
