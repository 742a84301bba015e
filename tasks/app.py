"""The Celery app, configured from settings (see :mod:`settings.celery`).

``celery -A tasks worker -Q harvest.scan,harvest.orders,harvest.housekeeping``,
``celery -A tasks beat``, ``celery -A tasks flower``.
"""

from __future__ import annotations

import logging

from celery import Celery

from settings import get_settings
from settings.celery import celery_config

settings = get_settings()
app = Celery("harvest")
app.conf.update(celery_config(settings))

log = logging.getLogger("harvest")
