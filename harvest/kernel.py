"""Stable public path (docs/design.md §10.1): ``harvest.kernel`` re-exports
:mod:`harvest.domain.kernel`, where the code lives. New code imports from
``harvest.domain.kernel``."""

from harvest.domain.kernel import *  # noqa: F401,F403
