"""Main's phases, sans-IO: the two enums that say where main stands, and
which moves between their values are legal.

:class:`~bossworker.ledger.MainLedger` holds one of each and changes each in
one method (``_enter`` for the phase, ``_decide`` for the intake); this
module holds the rule those methods obey, so the states and their moves are
read in one place.  Nothing here does I/O or keeps state.

* :class:`Phase`, what main knows of the Boss and the connection::

      STARTING --READY--> SERVING --BYE--> DONE
          |                  |
          +--INIT_FAILED--> FAILED    any live phase --send failed, Boss gone--> LOST
      any live phase (LOST too) --end of file without BYE--> DIED
      any live phase --main closed the socket, or end of file after a forced stop--> CLOSED

  DONE, DIED and CLOSED are final: :meth:`Phase.can_move_to` refuses every
  move out of them, so later news changes nothing.

* :class:`Intake`, what main decided about new work::

      OPEN --close_input()--> INPUT_CLOSED --shut_down()--> STOPPING
        any --shut_down(force=True)--> FORCED

  It only moves on, never back (:meth:`Intake.is_beyond`).

Two enums, not one: they are independent (input may be closed while the
Boss serves, dies or says BYE), and each of the ledger's verdicts reads both.
:class:`Wake` is what a ledger step returns: whom the driver must wake.
"""

from __future__ import annotations

import enum

__all__ = ["Intake", "Phase", "Wake"]


class Phase(enum.Enum):
    """What main knows of the Boss and of the connection to it."""

    STARTING = "starting"  # waiting for READY or INIT_FAILED
    FAILED = "failed"  # INIT_FAILED read: the session stops the Boss
    SERVING = "serving"  # READY read: jobs come and go
    LOST = "lost"  # the Boss is gone (a send failed, its process exited): the socket holds all that will come
    DONE = "done"  # BYE read: every answer is in
    DIED = "died"  # end of file without BYE: the Boss died
    CLOSED = "closed"  # main closed the socket (or it ended after a forced stop): nothing more is read

    @property
    def live(self) -> bool:
        """More may still be read from the socket (the phase is not final)."""
        return self in _LIVE

    def can_move_to(self, phase: Phase) -> bool:
        """Whether going from this phase to ``phase`` is a move (staying is not)."""
        return phase in _MOVES[self]


_LIVE = frozenset({Phase.STARTING, Phase.FAILED, Phase.SERVING, Phase.LOST})
_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset(
        {Phase.SERVING, Phase.FAILED, Phase.LOST, Phase.DONE, Phase.DIED, Phase.CLOSED}
    ),
    Phase.FAILED: frozenset({Phase.LOST, Phase.DONE, Phase.DIED, Phase.CLOSED}),
    Phase.SERVING: frozenset({Phase.LOST, Phase.DONE, Phase.DIED, Phase.CLOSED}),
    Phase.LOST: frozenset({Phase.DONE, Phase.DIED, Phase.CLOSED}),
    Phase.DONE: frozenset(),
    Phase.DIED: frozenset(),
    Phase.CLOSED: frozenset(),
}


class Intake(enum.Enum):
    """What main decided about new work."""

    OPEN = "open"  # add_work allowed
    INPUT_CLOSED = "input closed"  # close_input(): no more add_work; answers flow
    STOPPING = "stopping"  # shut_down() began: no more work; the Boss finishes and says BYE
    FORCED = "forced"  # shut_down(force=True) began: unretrieved results are discarded

    def is_beyond(self, other: Intake) -> bool:
        """Whether this decision comes after ``other`` (the intake never goes back)."""
        return _INTAKE_ORDER[self] > _INTAKE_ORDER[other]


_INTAKE_ORDER = {Intake.OPEN: 0, Intake.INPUT_CLOSED: 1, Intake.STOPPING: 2, Intake.FORCED: 3}


class Wake(enum.Flag):
    """Whom a change concerns (the driver wakes them)."""

    NONE = 0
    WAITERS = enum.auto()  # anyone waiting for an answer, a reply or the end
    INPUT = enum.auto()  # results(until_closed=True) waiting for work or close_input()
