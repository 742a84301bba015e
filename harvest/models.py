"""Stable public path (docs/design.md §10.1): ``harvest.models`` re-exports
:mod:`harvest.domain.models`, where the code lives. New code imports from
``harvest.domain.models``."""

from harvest.domain.models import *  # noqa: F401,F403
