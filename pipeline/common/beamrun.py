"""What every Beam stage shares: runner defaults, counters, and reading counters back after a run.

The default runner is Beam's FnApiRunner (the local portable runner). `--runner=DirectRunner` in Beam
2.77 first tries to download the Prism binary, which fails offline and wastes time, so a stage that is
given no `--runner` uses FnApiRunner. Every other Beam option (`--runner=DataflowRunner --project=...`,
`--direct_running_mode=multi_processing --direct_num_workers=4`, Flink/Spark options) is passed through
untouched: the pipelines themselves never assume a local runner.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """PipelineOptions from the arguments a stage did not consume, with FnApiRunner as the default runner."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args, save_main_session=False)


def counter(namespace: str, name: str) -> beam.metrics.metricbase.Counter:
    """A Beam counter; stages count every read, kept and rejected-by-reason element with these."""
    return beam.metrics.Metrics.counter(namespace, name)


def read_counters(result: Any, namespace: str) -> dict[str, int]:
    """Committed counter values of one namespace after `result.wait_until_finish()`, as {name: value}."""
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    totals: dict[str, int] = {}
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        totals[c.key.metric.name] = totals.get(c.key.metric.name, 0) + int(value or 0)
    return totals
