"""Pure protocol: the OpenAPI products the gateway serves and the API version of each.

A module of its own, importing nothing, so that the ``ramsim`` command can sign a call (and
list its products) without loading the message types.
"""

VERSIONS: dict[str, str] = {"ram": "2015-05-01", "sts": "2015-04-01", "ecs": "2014-05-26"}
