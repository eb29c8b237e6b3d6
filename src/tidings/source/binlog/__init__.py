"""Sans-I/O MySQL/MariaDB binlog decoder: events in, committed row changes out."""

from tidings.source.binlog.decoder import BinlogDecoder
from tidings.source.binlog.errors import BinlogError
from tidings.source.binlog.tablemap import TableInfo, TableInfoRequest

__all__ = ["BinlogDecoder", "BinlogError", "TableInfo", "TableInfoRequest"]
