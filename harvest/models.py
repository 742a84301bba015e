"""Stable public path (DESIGN §8): ``harvest.models`` re-exports :mod:`harvest.domain.models`, where the
code lives. New code imports from ``harvest.domain.models``."""

from harvest.domain.models import *  # noqa: F401,F403
