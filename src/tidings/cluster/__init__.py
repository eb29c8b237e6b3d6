"""A cluster of tidings nodes over Redis Streams (docs/topics/cluster.md).

Theory of operation. Every node serves clients from its own hub; exactly one
node at a time, the leader, reads the binlog. Leadership is a lease in Redis
(`SET NX PX`, renewed) with a fencing token (an `INCR` taken with it): every
write of the leader checks the token in a Lua script, so a leader that was
paused past its lease cannot write after its successor began
(tidings.cluster.backplane). The leader's hub is a `FeedHub` (tidings.feed):
its events and marks, as feed messages, become stream entries, appended with
the last transaction boundary as the cluster's checkpoint in one step
(tidings.cluster.leader). Every node consumes the stream and applies the
messages to its hub with the ids they carry (tidings.cluster.node). A new
leader reads the binlog from the checkpoint, re-derives the same ids, and
leaves out those already in the stream: consumers see each id once.
"""

from tidings.cluster.backplane import Backplane, BackplaneError, Checkpoint
from tidings.cluster.leader import Leader, StreamSink
from tidings.cluster.node import Node

__all__ = ["Backplane", "BackplaneError", "Checkpoint", "Leader", "Node", "StreamSink"]
