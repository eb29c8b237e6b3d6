"""`tidings serve --workers N`: one binlog reader, N worker processes on the same ports.

See docs/topics/workers.md. The reader (tidings.workers.reader) gives every id
and feeds each worker (tidings.workers.worker) every event over a unix socket
(tidings.workers.link, messages of tidings.feed); the supervisor
(tidings.workers.supervisor) starts, restarts and stops them.
"""
