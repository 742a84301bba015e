"""The simulators (issue 30): harvest's own stand-ins for an exchange, held to Binance's
documentation, never to harvest.

* :mod:`.paper` — the paper matching engine (the ``paper`` venue in-process), with
  :mod:`.paper_settlement` (stops by workingType, fills with the stated slippage model, funding,
  liquidation) and :mod:`.paper_fixtures` (what tests and the demo seed);
* :mod:`.clock` — the replay's market clock, shared through Redis;
* :mod:`.emulator` — a local Binance fapi server over the paper engine (``harvest emulator``),
  with :mod:`.emulator_streams` (user data and market streams over websockets) and faults.

Every venue, these included, passes the venue contract (``tests/contract``).
"""
