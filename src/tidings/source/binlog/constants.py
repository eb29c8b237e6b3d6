"""Numbers from the MySQL/MariaDB binlog format (sql/log_event.h, include/mysql_com.h)."""

from __future__ import annotations

from typing import Final

HEADER_LEN: Final = 19  # v4 common header
CRC_LEN: Final = 4

# -- event types ---------------------------------------------------------------------------
QUERY_EVENT: Final = 2
STOP_EVENT: Final = 3
ROTATE_EVENT: Final = 4
INTVAR_EVENT: Final = 5
RAND_EVENT: Final = 13
USER_VAR_EVENT: Final = 14
FORMAT_DESCRIPTION_EVENT: Final = 15
XID_EVENT: Final = 16
TABLE_MAP_EVENT: Final = 19
WRITE_ROWS_EVENT_V1: Final = 23
UPDATE_ROWS_EVENT_V1: Final = 24
DELETE_ROWS_EVENT_V1: Final = 25
INCIDENT_EVENT: Final = 26
HEARTBEAT_LOG_EVENT: Final = 27
ROWS_QUERY_LOG_EVENT: Final = 29
WRITE_ROWS_EVENT: Final = 30
UPDATE_ROWS_EVENT: Final = 31
DELETE_ROWS_EVENT: Final = 32
GTID_LOG_EVENT: Final = 33
ANONYMOUS_GTID_LOG_EVENT: Final = 34
PREVIOUS_GTIDS_LOG_EVENT: Final = 35
XA_PREPARE_LOG_EVENT: Final = 38
PARTIAL_UPDATE_ROWS_EVENT: Final = 39
TRANSACTION_PAYLOAD_EVENT: Final = 40
HEARTBEAT_LOG_EVENT_V2: Final = 41
# MariaDB
ANNOTATE_ROWS_EVENT: Final = 160
BINLOG_CHECKPOINT_EVENT: Final = 161
GTID_EVENT: Final = 162
GTID_LIST_EVENT: Final = 163
START_ENCRYPTION_EVENT: Final = 164
QUERY_COMPRESSED_EVENT: Final = 165
WRITE_ROWS_COMPRESSED_EVENT_V1: Final = 166
UPDATE_ROWS_COMPRESSED_EVENT_V1: Final = 167
DELETE_ROWS_COMPRESSED_EVENT_V1: Final = 168
WRITE_ROWS_COMPRESSED_EVENT: Final = 169
UPDATE_ROWS_COMPRESSED_EVENT: Final = 170
DELETE_ROWS_COMPRESSED_EVENT: Final = 171

# header flags
LOG_EVENT_ARTIFICIAL_F: Final = 0x20

# FORMAT_DESCRIPTION checksum algorithms
CHECKSUM_OFF: Final = 0
CHECKSUM_CRC32: Final = 1

# MariaDB GTID event flags
FL_STANDALONE: Final = 1
FL_GROUP_COMMIT_ID: Final = 2

# -- column types --------------------------------------------------------------------------
T_DECIMAL: Final = 0
T_TINY: Final = 1
T_SHORT: Final = 2
T_LONG: Final = 3
T_FLOAT: Final = 4
T_DOUBLE: Final = 5
T_NULL: Final = 6
T_TIMESTAMP: Final = 7
T_LONGLONG: Final = 8
T_INT24: Final = 9
T_DATE: Final = 10
T_TIME: Final = 11
T_DATETIME: Final = 12
T_YEAR: Final = 13
T_NEWDATE: Final = 14
T_VARCHAR: Final = 15
T_BIT: Final = 16
T_TIMESTAMP2: Final = 17
T_DATETIME2: Final = 18
T_TIME2: Final = 19
T_JSON: Final = 245
T_NEWDECIMAL: Final = 246
T_ENUM: Final = 247
T_SET: Final = 248
T_TINY_BLOB: Final = 249
T_MEDIUM_BLOB: Final = 250
T_LONG_BLOB: Final = 251
T_BLOB: Final = 252
T_VAR_STRING: Final = 253
T_STRING: Final = 254
T_GEOMETRY: Final = 255

# -- TABLE_MAP optional metadata field types -----------------------------------------------
OM_SIGNEDNESS: Final = 1
OM_DEFAULT_CHARSET: Final = 2
OM_COLUMN_CHARSET: Final = 3
OM_COLUMN_NAME: Final = 4
OM_SET_STR_VALUE: Final = 5
OM_ENUM_STR_VALUE: Final = 6
OM_GEOMETRY_TYPE: Final = 7
OM_SIMPLE_PRIMARY_KEY: Final = 8
OM_PRIMARY_KEY_WITH_PREFIX: Final = 9
OM_ENUM_AND_SET_DEFAULT_CHARSET: Final = 10
OM_ENUM_AND_SET_COLUMN_CHARSET: Final = 11
OM_COLUMN_VISIBILITY: Final = 12

BINARY_COLLATION: Final = 63
