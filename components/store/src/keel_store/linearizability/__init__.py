"""A linearizability checker for key-value histories (Wing & Gong, Lowe, porcupine).

Used by the simulator and by the real-process tests to decide whether what clients saw
could have come from one copy of the store applying each operation atomically at some
instant between its call and its return.

Input format
------------
A history is an iterable of :class:`Operation`, in any order::

    Operation(client=1, call=0.0, ret=1.5, kind=Kind.PUT, key="k", value="a")
    Operation(client=2, call=1.0, ret=2.0, kind=Kind.GET, key="k", output="a")
    Operation(client=3, call=1.2, ret=None, kind=Kind.CAS, key="k", expected="a", value="b")

- ``client``: who issued it (for messages only; one client may have several pending
  operations, e.g. after a timeout).
- ``call`` / ``ret``: when the request was sent and the reply received, read from one
  clock shared by every client (any unit, ints or floats). Equal times count as
  overlapping. ``ret=None`` means the outcome is unknown (no reply, timeout, crash): the
  operation may have taken effect at any point after ``call``, or never.
- ``kind`` and its fields (values are any hashable; ``None`` always means "absent"):

  ========  ====================  ==================================================
  kind      inputs                output (ignored when ``ret`` is None)
  ========  ====================  ==================================================
  GET       key                   the value read, ``None`` if absent
  PUT       key, value            unused
  DELETE    key                   whether the key existed (bool), or None: unobserved
  CAS       key, expected, value  whether it wrote (bool); ``expected=None`` makes it
                                  a put-if-absent
  ========  ====================  ==================================================

Every key starts absent. Each operation touches one key, so keys are checked apart.

Output
------
``check(history, timeout=None)`` returns a :class:`Result`: ``ok`` is True, False (with
the ``key``, an ``explanation`` naming the longest legal order found and the operation
that cannot follow it, and the ``operations`` involved) or None if ``timeout`` seconds
ran out first. A malformed history raises :class:`HistoryError` naming the operation.
:class:`Recorder` builds a history as clients run (pending operations become unknown).
"""

from .checker import Result, check
from .history import HistoryError, Kind, Operation, Recorder, Value, validate

__all__ = [
    "HistoryError",
    "Kind",
    "Operation",
    "Recorder",
    "Result",
    "Value",
    "check",
    "validate",
]
