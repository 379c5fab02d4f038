"""Pure protocol: the typed messages of every exchange, one module per service.

``ALL`` lists every body type; :mod:`protocol.envelope` builds its tagged union from it.
"""

from __future__ import annotations

from protocol.errors import Error
from protocol.messages import app, common, ecs, ram, sts

ALL: tuple[type, ...] = (Error, *common.ALL, *ram.ALL, *sts.ALL, *ecs.ALL, *app.ALL)
