"""The policy lab (docs/design.md §9): ``harvest replay`` runs the live kernel over real history.

* :mod:`harvest.lab.market` — klines (any Binance archive file), funding, and the market state
  after every bar (:func:`harvest.domain.market.market_series`, the batch form of the scan's);
* :mod:`harvest.lab.entries` — the positions to replay: generated or the desk's own CSV;
* :mod:`harvest.lab.engine` — the fill model and the policies, on the batch kernel
  (:func:`harvest.domain.kernel.evaluate_batch`, the code the live scan runs);
* :mod:`harvest.lab.stats` — R statistics with block-bootstrap intervals, drawdowns, ratios;
* :mod:`harvest.lab.report` — the terminal table, JSON and the HTML report.

Pure but for reading files: no Redis, no venue, no Celery.
"""
