"""Custom gauges on Triton's ``/metrics`` for the Python-backend models, best effort.

Shared by ``python_backend.py`` and the Whisper loop (inlined into its self-contained
``model.py`` by ``configs.loop_model_file``, so it imports nothing of this project).
"""
from __future__ import annotations

import triton_python_backend_utils as pb_utils  # only importable inside Triton's stub


def gauge(name: str, description: str, labels: dict, value: float):
    """A gauge ``name{labels}`` set to ``value``: (family, metric), which the caller keeps as
    long as the model lives (Triton drops a metric whose object is freed), or None on a
    Triton without custom metrics (before 23.05, or metrics off), which serves all the same;
    the log says why the gauge is missing."""
    try:
        family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
        metric = family.Metric(labels=labels)
        metric.set(value)
    except Exception as err:  # AttributeError on an old Triton or the stand-in; its own errors otherwise
        pb_utils.Logger.log_warn(f"no {name} gauge for {labels} ({err})")
        return None
    return family, metric
