"""Collation ids (as the binlog carries them) to Python codecs.

Built from MariaDB 10.11 `information_schema.COLLATION_CHARACTER_SET_APPLICABILITY`
plus MySQL 8's extra ids. Ids absent here decode as UTF-8 (the common case for
collations added later); `replace` keeps one odd byte from stopping the stream.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from tidings.source.binlog.constants import BINARY_COLLATION

# charset -> collation ids (< 2048; MariaDB's UCA 14 ids >= 2048 follow a formula below)
_IDS: dict[str, tuple[int, ...]] = {
    "armscii8": (32, 64, 1056, 1088),
    "ascii": (11, 65, 1035, 1089),
    "big5": (1, 84, 1025, 1108),
    "cp1250": (26, 34, 44, 66, 99, 1050, 1090),
    "cp1251": (14, 23, 50, 51, 52, 1074, 1075),
    "cp1256": (57, 67, 1081, 1091),
    "cp1257": (29, 58, 59, 1082, 1083),
    "cp850": (4, 80, 1028, 1104),
    "cp852": (40, 81, 1064, 1105),
    "cp866": (36, 68, 1060, 1092),
    "cp932": (95, 96, 1119, 1120),
    "dec8": (3, 69, 1027, 1093),
    "eucjpms": (97, 98, 1121, 1122),
    "euckr": (19, 85, 1043, 1109),
    "gb18030": (248, 249, 250),
    "gb2312": (24, 86, 1048, 1110),
    "gbk": (28, 87, 1052, 1111),
    "geostd8": (92, 93, 1116, 1117),
    "greek": (25, 70, 1049, 1094),
    "hebrew": (16, 71, 1040, 1095),
    "hp8": (6, 72, 1030, 1096),
    "keybcs2": (37, 73, 1061, 1097),
    "koi8r": (7, 74, 1031, 1098),
    "koi8u": (22, 75, 1046, 1099),
    "latin1": (5, 8, 15, 31, 47, 48, 49, 94, 1032, 1071),
    "latin2": (2, 9, 21, 27, 77, 1033, 1101),
    "latin5": (30, 78, 1054, 1102),
    "latin7": (20, 41, 42, 79, 1065, 1103),
    "macce": (38, 43, 1062, 1067),
    "macroman": (39, 53, 1063, 1077),
    "sjis": (13, 88, 1037, 1112),
    "swe7": (10, 82, 1034, 1106),
    "tis620": (18, 89, 1042, 1113),
    "ucs2": (35, 90, *range(128, 152), 159, 640, 641, 642, 1059, 1114, 1152, 1174),
    "ujis": (12, 91, 1036, 1115),
    "utf16": (54, 55, *range(101, 125), 672, 673, 674, 1078, 1079, 1125, 1147),
    "utf16le": (56, 62, 1080, 1086),
    "utf32": (60, 61, *range(160, 184), 736, 737, 738, 1084, 1085, 1184, 1206),
    "utf8mb3": (33, 76, 83, *range(192, 216), 223, 576, 577, 578, 1057, 1107, 1216, 1238),
    # 255..323: MySQL 8's utf8mb4_0900_* family
    "utf8mb4": (45, 46, *range(224, 248), *range(255, 324), 608, 609, 610, 1069, 1070, 1248, 1270),
}

# MariaDB UCA 14.0.0 collations: id >> 8 names the charset
_UCA1400 = {8: "utf8mb3", 9: "utf8mb4", 10: "ucs2", 11: "utf16", 12: "utf32"}

#: not a Python codec: MySQL latin1, decoded by `decode_latin1`
MYSQL_LATIN1 = "mysql-latin1"

# MySQL charset name -> Python codec. Charsets Python lacks decode as their nearest
# superset (a few symbols may differ).
_CODECS = {
    "armscii8": "latin-1",
    "ascii": "ascii",
    "big5": "big5",
    "cp1250": "cp1250",
    "cp1251": "cp1251",
    "cp1256": "cp1256",
    "cp1257": "cp1257",
    "cp850": "cp850",
    "cp852": "cp852",
    "cp866": "cp866",
    "cp932": "cp932",
    "dec8": "latin-1",
    "eucjpms": "euc_jis_2004",
    "euckr": "euc-kr",
    "gb18030": "gb18030",
    "gb2312": "gb2312",
    "gbk": "gbk",
    "geostd8": "latin-1",
    "greek": "iso8859-7",
    "hebrew": "iso8859-8",
    "hp8": "latin-1",
    "keybcs2": "cp437",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "latin1": MYSQL_LATIN1,
    "latin2": "iso8859-2",
    "latin5": "iso8859-9",
    "latin7": "iso8859-13",
    "macce": "mac-latin2",
    "macroman": "mac-roman",
    "sjis": "shift_jis",
    "swe7": "ascii",
    "tis620": "tis-620",
    "ucs2": "utf-16-be",
    "ujis": "euc-jp",
    "utf16": "utf-16-be",
    "utf16le": "utf-16-le",
    "utf32": "utf-32-be",
    "utf8mb3": "utf-8",
    "utf8mb4": "utf-8",
}

_BY_ID: dict[int, str] = {i: _CODECS[cs] for cs, ids in _IDS.items() for i in ids}

# MySQL's latin1 is Windows-1252 whose five holes map to the C1 controls.
_LATIN1_TABLE = "".join(
    chr(b) if b in (0x81, 0x8D, 0x8F, 0x90, 0x9D) else bytes([b]).decode("cp1252")
    for b in range(256)
)


def decode_latin1(data: bytes) -> str:
    """MySQL latin1 (every byte maps to a character, so nothing can fail)."""
    return codecs.charmap_decode(data, "strict", _LATIN1_TABLE)[0]


def codec_for(collation: int | None) -> str | None:
    """Python codec for a collation id; None for binary data (charset 63)."""
    if collation == BINARY_COLLATION:
        return None
    if collation is None:
        return "utf-8"
    name = _BY_ID.get(collation)
    if name is None:
        name = _CODECS[_UCA1400[collation >> 8]] if (collation >> 8) in _UCA1400 else "utf-8"
    return name


def text_decoder(collation: int | None) -> Callable[[bytes], str]:
    """A `bytes -> str` function for `collation` (binary decodes as UTF-8 too)."""
    codec = codec_for(collation) or "utf-8"
    if codec == MYSQL_LATIN1:
        return decode_latin1

    def decode(data: bytes) -> str:
        return data.decode(codec, "replace")

    return decode
