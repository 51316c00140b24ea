"""EC2 flow logs as AWS has them. Local stack only; moto 5.2.5.

- moto refuses a second flow log of a resource to the same destination whatever its configuration
  (FlowLogAlreadyExists); AWS refuses only a flow log "with the same configuration and log destination"
  (EC2 API Reference, "Error codes": FlowLogAlreadyExists), so one in another format can be created beside
  the old one before the old one is deleted (VPC User Guide, "Flow log limitations": a format cannot change,
  "delete the flow log and create a new one"; CloudFormation replaces one create-first).
- moto looks up `bucket/prefix/` as a bucket name and answers Unsuccessful for an S3 destination with a key
  prefix; AWS accepts `arn:aws:s3:::bucket/prefix/`.
"""
from __future__ import annotations

from typing import Any

from moto.ec2.models.flow_logs import FlowLogsBackend

DEFAULT_FORMAT = ("${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} "
                  "${packets} ${bytes} ${start} ${end} ${action} ${log-status}")
_original = FlowLogsBackend.create_flow_logs


def _create_flow_logs(self: Any, resource_type: str, resource_ids: list[str], traffic_type: str,
                      deliver_logs_permission_arn: str, log_destination_type: str, log_destination: str,
                      log_group_name: str, log_format: str, max_aggregation_interval: int) -> Any:
    config = (traffic_type, log_format or DEFAULT_FORMAT, max_aggregation_interval or 600)
    bucket_only = log_destination
    if log_destination_type == "s3" and log_destination and "/" in log_destination.split(":", 5)[5]:
        bucket_only = log_destination.split("/", 1)[0]
    everything = self.flow_logs
    self.flow_logs = {k: f for k, f in everything.items()  # only the same configuration counts as a duplicate
                      if (f.traffic_type, f.log_format, f.max_aggregation_interval) == config
                      and f.log_destination in (log_destination, bucket_only)}
    try:
        created, failed = _original(self, resource_type, resource_ids, traffic_type, deliver_logs_permission_arn,
                                    log_destination_type, bucket_only, log_group_name, log_format,
                                    max_aggregation_interval)
    finally:
        self.flow_logs = {**everything, **self.flow_logs}
    for flow_log in created:
        flow_log.log_destination = log_destination
    return created, failed


def apply() -> None:
    FlowLogsBackend.create_flow_logs = _create_flow_logs  # type: ignore[method-assign]
