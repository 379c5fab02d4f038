"""Pure protocol: the wire contract of ramsim.

Everything that crosses the bus is an :class:`~protocol.envelope.Envelope` holding one typed
message body, encoded as plain msgpack by :mod:`protocol.codec`. Topics are built and matched
by :mod:`protocol.topics` only. Nothing here imports from ``services``.
"""
