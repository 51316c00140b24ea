"""provision-feeds: make every selected feed exist as declared (or, with dry_run, say what would change)."""

from __future__ import annotations

from prefect import flow
from prefect.futures import PrefectFuture

from flows._common import StepsFailed, concurrent_tasks, gather, publish, start_run
from socfeeds.report import Change
from tasks.buckets import ensure_bucket
from tasks.canary import ensure_canary_writer
from tasks.firehose import ensure_cluster_logging, ensure_delivery_stream, ensure_subscription
from tasks.kms import ensure_key_policies
from tasks.notifications import ensure_notification
from tasks.queues import ensure_queues
from tasks.reader import ensure_reader
from tasks.sources import ensure_source

CHANGE_COLUMNS = ["feed", "resource", "action", "detail", "applied"]


@flow(name="provision-feeds", task_runner=concurrent_tasks())
def provision_feeds(feeds: list[str] | None = None, dry_run: bool = False) -> list[Change]:
    """Create or adopt every feed's resources: for S3 feeds the bucket, queues, notification and source;
    for the EKS feed the cluster's logging, the delivery stream and the subscription; the XSIAM reader
    and the canary's writer role.

    Idempotent: a rerun after any failure converges, and a run with nothing to do reports no
    changes. Nothing is ever deleted.

    Args:
        feeds: Feed names from settings; None means every feed.
        dry_run: Change nothing; report every change that would be made.
    """
    run = start_run(feeds)
    keys = ensure_key_policies.submit(run.aws, run.settings, dry_run)  # S3 and CloudTrail test the key on setup
    steps: list[tuple[str, PrefectFuture[list[Change]]]] = [
        ("ensure-key-policies", keys),
        ("ensure-reader", ensure_reader.submit(run.aws, run.settings, dry_run)),
        ("ensure-canary-writer", ensure_canary_writer.submit(run.aws, run.settings, dry_run))]
    for name in run.s3_feeds:
        bucket = ensure_bucket.submit(run.aws, run.settings, name, dry_run)
        queues = ensure_queues.submit(run.aws, run.settings, name, dry_run)
        steps += [
            (f"ensure-bucket[{name}]", bucket),
            (f"ensure-queues[{name}]", queues),
            (f"ensure-notification[{name}]",
             ensure_notification.submit(run.aws, run.settings, name, dry_run, return_state=False,
                                       wait_for=[bucket, queues, keys])),
            (f"ensure-source[{name}]", ensure_source.submit(run.aws, run.settings, name, dry_run, return_state=False,
                                                             wait_for=[bucket, keys])),
        ]
    for name in run.firehose_feeds:
        logging = ensure_cluster_logging.submit(run.aws, run.settings, name, dry_run)
        stream = ensure_delivery_stream.submit(run.aws, run.settings, name, dry_run)
        steps += [
            (f"ensure-cluster-logging[{name}]", logging),
            (f"ensure-delivery-stream[{name}]", stream),
            (f"ensure-subscription[{name}]", ensure_subscription.submit(
                run.aws, run.settings, name, dry_run, return_state=False, wait_for=[logging, stream])),
        ]
    changes, errors = gather(steps)
    verb = "would make" if dry_run else "made"
    summary = f"provision-feeds {verb} {len(changes)} changes" if changes else "provision-feeds: no changes"
    publish("provision-feeds", summary, changes, CHANGE_COLUMNS)
    if errors:
        raise StepsFailed(f"{len(errors)} provisioning steps failed (rerun after the fix converges):\n"
                          + "\n".join(f"{label}: {error}" for label, error in errors))
    return changes
