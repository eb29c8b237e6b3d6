"""The MySQL side: binlog replica connection, decoder, schema hints."""
