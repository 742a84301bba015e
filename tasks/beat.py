"""Beat's scheduler moved to :mod:`harvest.services.schedule` (issue 34: ``tasks/`` holds no
Redis access). This name stays for a Celery configured by hand with
``beat_scheduler = "tasks.beat:HarvestScheduler"`` (or ``celery beat -S tasks.beat:…``), so
that such a beat keeps starting during an upgrade."""

from harvest.services.schedule import HarvestScheduler

__all__ = ["HarvestScheduler"]
