"""Pure conversions from the catalogue and recorder points to Cloud Monitoring protobufs.

Messages are built as raw ``*_pb2`` objects (proto-plus wrappers cost ~10x more per series);
the GAPIC client accepts them as requests.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.api import distribution_pb2, label_pb2, metric_pb2, monitored_resource_pb2
from google.cloud import monitoring_v3
from google.protobuf import timestamp_pb2

from orchestrator.metrics.catalogue import MetricDef, ValueType
from orchestrator.metrics.recorder import DistributionValue, Point

_MK = metric_pb2.MetricDescriptor.MetricKind
_VT = metric_pb2.MetricDescriptor.ValueType
_KIND = {"CUMULATIVE": _MK.CUMULATIVE, "GAUGE": _MK.GAUGE, "DISTRIBUTION": _MK.CUMULATIVE}
_VTYPE = {"INT64": _VT.INT64, "DOUBLE": _VT.DOUBLE, "DISTRIBUTION": _VT.DISTRIBUTION}

TimeSeriesPb = monitoring_v3.TimeSeries.pb()
PointPb = monitoring_v3.Point.pb()
IntervalPb = monitoring_v3.TimeInterval.pb()
TypedValuePb = monitoring_v3.TypedValue.pb()
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


def _ts(t: float) -> timestamp_pb2.Timestamp:
    seconds = int(t)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((t - seconds) * 1e9))


def _typed_value(metric: MetricDef, value: int | float | DistributionValue) -> object:
    if isinstance(value, DistributionValue):
        return TypedValuePb(distribution_value=distribution_pb2.Distribution(
            count=value.count,
            mean=value.mean if value.count else 0.0,
            sum_of_squared_deviation=value.sum_of_squared_deviation,
            bucket_options=distribution_pb2.Distribution.BucketOptions(
                explicit_buckets=distribution_pb2.Distribution.BucketOptions.Explicit(
                    bounds=list(value.bounds))),
            bucket_counts=list(value.bucket_counts),
        ))
    if metric.value_type is ValueType.INT64:
        return TypedValuePb(int64_value=round(value))
    return TypedValuePb(double_value=float(value))


def time_series_pb(point: Point, resource: monitored_resource_pb2.MonitoredResource,
                   now: float) -> object:
    """One TimeSeries with one point; CUMULATIVE keeps its fixed start time."""
    metric = point.metric
    if metric.kind.value == "GAUGE":
        interval = IntervalPb(end_time=_ts(now))
    else:  # the start time never moves; the end must come after it
        interval = IntervalPb(start_time=_ts(point.start_time),
                              end_time=_ts(max(now, point.start_time + 0.001)))
    return TimeSeriesPb(
        metric=metric_pb2.Metric(type=metric.metric_type, labels=dict(point.labels)),
        resource=resource,
        metric_kind=_KIND[metric.kind.value],
        value_type=_VTYPE[metric.value_type.value],
        points=[PointPb(interval=interval, value=_typed_value(metric, point.value))],
    )


def batches(items: Sequence[object], size: int) -> Iterable[Sequence[object]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
