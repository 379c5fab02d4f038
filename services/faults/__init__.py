"""Fault experiments: a run's history (:mod:`.history`), the invariants checked over it
(:mod:`.invariants`) and the recorder that captures it from a live cluster (:mod:`.recorder`)."""
