"""``gmpo dashboard``: a live, offline web dashboard of training runs and of the serving request log.

Parts (each importable alone; none imports torch):

- :mod:`gmpo.dashboard.store`: a run directory read incrementally (gmpo.runs.files.JsonlTail) into columns;
- :mod:`gmpo.dashboard.series`: the chart table, min/max downsampling, the log-ratio heat-map, Wilson intervals;
- :mod:`gmpo.dashboard.views`: what each part of the page shows (JSON-ready dicts);
- :mod:`gmpo.dashboard.serving`: read-only aggregates of `gmpo serve`'s request log (SQLite);
- :mod:`gmpo.dashboard.app`: the FastAPI app, its JSON API and the Server-Sent Events stream;
- ``static/``: the page (HTML, CSS, JS) and the vendored uPlot 1.6.32 (MIT; ``static/uPlot.LICENSE``);
- :mod:`gmpo.dashboard.synthetic`: synthetic run directories for tests, benchmarks and demos.
"""
