"""The ``ramsim`` command: run a cluster, call its APIs like the ``aliyun`` CLI, run the demo."""
