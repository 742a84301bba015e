"""Stable public path (docs/design.md §10.1): ``harvest.exit_ladder`` re-exports
:mod:`harvest.domain.exit_ladder`, where the code lives. New code imports from
``harvest.domain.exit_ladder``."""

from harvest.domain.exit_ladder import *  # noqa: F401,F403
