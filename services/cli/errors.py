"""I/O shell: the exceptions a ``ramsim`` command raises for a user mistake or a missing piece.

``main`` prints the exception's one line and exits with its status: nothing a user can cause
(a wrong parameter, no cluster, a missing Mosquitto, a taken port) ends in a traceback::

    CliError             one line, ``ramsim <command>: <what to do>``, exit status 2
    ├── NoCluster        (cluster.py) no cluster file where one was expected
    ├── UpError          (up.py) the cluster cannot start or resume
    ├── Unreachable      (api.py) the gateway or a metadata view does not answer; also an ``OSError``
    └── ApiError         (api.py) the API's error answer, ``ERROR: <Code>: <Message>``, exit status 1
"""

from __future__ import annotations


class CliError(Exception):
    exit_status = 2

    def line(self, command: str) -> str:
        return f"ramsim {command}: {self}" if command else f"ramsim: {self}"
