"""Pure conversions from the catalogue and recorder points to Cloud Monitoring protobufs.

Messages are built as raw ``*_pb2`` objects (proto-plus wrappers cost ~10x more per series);
the GAPIC client accepts them as requests (it wraps a raw request without copying).
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.api import label_pb2, metric_pb2, monitored_resource_pb2
from google.cloud import monitoring_v3
from google.protobuf import timestamp_pb2

from orchestrator.metrics.catalogue import MetricDef, ValueType
from orchestrator.metrics.recorder import DistributionValue, Point

_MK = metric_pb2.MetricDescriptor.MetricKind
_VT = metric_pb2.MetricDescriptor.ValueType
_KIND = {"CUMULATIVE": _MK.CUMULATIVE, "GAUGE": _MK.GAUGE, "DISTRIBUTION": _MK.CUMULATIVE}
_VTYPE = {"INT64": _VT.INT64, "DOUBLE": _VT.DOUBLE, "DISTRIBUTION": _VT.DISTRIBUTION}

_INT64 = range(-(2**63), 2**63)
MAX_LABEL_VALUE = 1024  # LabelDescriptor: a STRING label value has at most 1,024 characters

TimeSeriesPb = monitoring_v3.TimeSeries.pb()
CreateTimeSeriesRequestPb = monitoring_v3.CreateTimeSeriesRequest.pb()


def _default_task_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class GenericTask:
    """The ``generic_task`` monitored resource of this process."""

    project_id: str
    job: str = "orchestrator"
    location: str = "global"
    namespace: str = "orchestrator"
    task_id: str = field(default_factory=_default_task_id)

    def pb(self) -> monitored_resource_pb2.MonitoredResource:
        return monitored_resource_pb2.MonitoredResource(
            type="generic_task",
            labels={
                "project_id": self.project_id, "location": self.location,
                "namespace": self.namespace, "job": self.job, "task_id": self.task_id,
            },
        )


def descriptor_pb(project: str, metric: MetricDef) -> metric_pb2.MetricDescriptor:
    return metric_pb2.MetricDescriptor(
        name=f"projects/{project}/metricDescriptors/{metric.metric_type}",
        type=metric.metric_type,
        metric_kind=_KIND[metric.kind.value],
        value_type=_VTYPE[metric.value_type.value],
        unit=metric.unit,
        description=metric.description,
        display_name="orchestrator " + metric.name,
        labels=[
            label_pb2.LabelDescriptor(key=k, value_type=label_pb2.LabelDescriptor.STRING)
            for k in metric.labels
        ],
    )


def unwritable(point: Point) -> str | None:
    """Why Cloud Monitoring would refuse this series whatever the moment (``bad_value``:
    a non-finite value or an integer beyond INT64; ``label_too_long``), or None. Such a
    series is never sent: the API would refuse it at every flush."""
    if any(len(v) > MAX_LABEL_VALUE for _, v in point.labels):
        return "label_too_long"
    value = point.value
    try:
        if isinstance(value, DistributionValue):
            ok = math.isfinite(value.mean) and math.isfinite(value.sum_of_squared_deviation)
        elif point.metric.value_type is ValueType.INT64:
            ok = math.isfinite(value) and round(value) in _INT64
        else:
            ok = math.isfinite(float(value))
    except (OverflowError, TypeError, ValueError):
        ok = False
    return None if ok else "bad_value"


def _set_time(ts: timestamp_pb2.Timestamp, t: float) -> None:
    seconds = int(t)
    ts.seconds = seconds
    ts.nanos = int((t - seconds) * 1e9)


def series_template(point: Point, resource: monitored_resource_pb2.MonitoredResource) -> Any:
    """The parts of a TimeSeries that never change for one series (cache it: copying a
    template is ~6x cheaper than building metric and resource maps again)."""
    metric = point.metric
    return TimeSeriesPb(
        metric=metric_pb2.Metric(type=metric.metric_type, labels=dict(point.labels)),
        resource=resource,
        metric_kind=_KIND[metric.kind.value],
        value_type=_VTYPE[metric.value_type.value],
    )


def add_point(ts: Any, point: Point, now: float) -> None:
    """Append the one point of ``point`` at ``now``; CUMULATIVE keeps its fixed start time."""
    metric, value = point.metric, point.value
    p = ts.points.add()
    if metric.kind.value == "GAUGE":
        _set_time(p.interval.end_time, now)
    else:  # the start time never moves; the end must come after it
        _set_time(p.interval.start_time, point.start_time)
        _set_time(p.interval.end_time, max(now, point.start_time + 0.001))
    if isinstance(value, DistributionValue):
        d = p.value.distribution_value
        d.count = value.count
        d.mean = value.mean if value.count else 0.0
        d.sum_of_squared_deviation = value.sum_of_squared_deviation
        d.bucket_options.explicit_buckets.bounds.extend(value.bounds)
        d.bucket_counts.extend(value.bucket_counts)
    elif metric.value_type is ValueType.INT64:
        p.value.int64_value = round(value)
    else:
        p.value.double_value = float(value)


def time_series_pb(point: Point, resource: monitored_resource_pb2.MonitoredResource,
                   now: float) -> Any:
    """One TimeSeries with one point."""
    ts = series_template(point, resource)
    add_point(ts, point, now)
    return ts


def batches(items: Sequence[object], size: int) -> Iterable[Sequence[object]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
