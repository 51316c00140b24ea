"""The notification merge, as pure functions over recorded AWS answers (no emulator: moto 5.2.5 does not
round-trip EventBridgeConfiguration, the member a careless write-back switches off)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tasks.notifications import NotificationOverlap, merged_configuration, overlaps

QUEUE_ARN = "arn:aws:sqs:eu-west-2:123456789012:socfeeds-cloudtrail"
OURS_ID = "socfeeds-cloudtrail"
OURS = {"Id": OURS_ID, "QueueArn": QUEUE_ARN, "Events": ["s3:ObjectCreated:*"]}

# GetBucketNotificationConfiguration as boto3 returns it from AWS for a bucket with EventBridge delivery on
# and three other consumers, none of them for new objects (AWS capitalises filter rule names on the way out).
RECORDED: dict[str, Any] = {
    "TopicConfigurations": [{
        "Id": "restore-alerts",
        "TopicArn": "arn:aws:sns:eu-west-2:123456789012:restore-alerts",
        "Events": ["s3:ObjectRestore:Post", "s3:ObjectRestore:Completed"],
    }],
    "QueueConfigurations": [{
        "Id": "audit-deletes",
        "QueueArn": "arn:aws:sqs:eu-west-2:123456789012:audit-deletes",
        "Events": ["s3:ObjectRemoved:*"],
    }],
    "LambdaFunctionConfigurations": [{
        "Id": "quarantine-tagger",
        "LambdaFunctionArn": "arn:aws:lambda:eu-west-2:123456789012:function:quarantine-tagger",
        "Events": ["s3:ObjectTagging:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": "quarantine/"}]}},
    }],
    "EventBridgeConfiguration": {},
    "ResponseMetadata": {
        "RequestId": "7Q2D4J0X8VZ3K5M1",
        "HostId": "b3dkUUtoMU5ZUDh3c0xxRFVPN3p6dz09",
        "HTTPStatusCode": 200,
        "HTTPHeaders": {
            "x-amz-id-2": "b3dkUUtoMU5ZUDh3c0xxRFVPN3p6dz09",
            "x-amz-request-id": "7Q2D4J0X8VZ3K5M1",
            "date": "Tue, 03 Jun 2025 09:14:27 GMT",
            "content-type": "application/xml",
            "transfer-encoding": "chunked",
            "server": "AmazonS3",
        },
        "RetryAttempts": 0,
    },
}

# The Amazon S3 User Guide's examples of valid and invalid configurations, entry by entry as boto3 takes them
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-filtering.html); the cases
# without its ARNs are rules its text states (root suffix, prefix against suffix, different event types).
SQS = "arn:aws:sqs:us-west-2:444455556666:"
LAMBDA = "arn:aws:lambda:us-west-2:444455556666:"
SNS = "arn:aws:sns:us-west-2:444455556666:"


def entry(target: str, events: list[str], prefix: str | None = None, suffix: str | None = None) -> dict[str, Any]:
    rules = [{"Name": name, "Value": value} for name, value in (("prefix", prefix), ("suffix", suffix)) if value]
    kind = {"sqs": "QueueArn", "lambda": "LambdaFunctionArn", "sns": "TopicArn"}[target.split(":")[2]]
    return {kind: target, "Events": events, **({"Filter": {"Key": {"FilterRules": rules}}} if rules else {})}


VALID = {
    "non-overlapping prefixes": (entry(SQS + "sqs-queue-A", ["s3:ObjectCreated:Put"], prefix="images/"),
                                 entry(SQS + "sqs-queue-B", ["s3:ObjectCreated:Put"], prefix="logs/")),
    "non-overlapping suffixes": (entry(LAMBDA + "cloud-function-A", ["s3:ObjectCreated:Put"], suffix=".jpg"),
                                 entry(LAMBDA + "cloud-function-B", ["s3:ObjectCreated:Put"], suffix=".png")),
    "common prefix, non-overlapping suffixes": (
        entry(LAMBDA + "cloud-function-A", ["s3:ObjectCreated:Put"], prefix="images", suffix=".jpg"),
        entry(LAMBDA + "cloud-function-B", ["s3:ObjectCreated:Put"], prefix="images", suffix=".png")),
    "same prefix, different event types": (entry(SQS + "a", ["s3:ObjectCreated:Put"], prefix="image/"),
                                           entry(SQS + "b", ["s3:ObjectRemoved:*"], prefix="image/")),
    "created and removed wildcards": (entry(SQS + "a", ["s3:ObjectCreated:*"]),
                                      entry(SQS + "b", ["s3:ObjectRemoved:*"])),
}
INVALID = {
    "root prefix overlaps any prefix": (entry(SNS + "sns-notification-one", ["s3:ObjectCreated:*"]),
                                        entry(SNS + "sns-notification-two", ["s3:ObjectCreated:*"], prefix="images")),
    "root suffix overlaps any suffix": (entry(SNS + "one", ["s3:ObjectCreated:*"]),
                                        entry(SNS + "two", ["s3:ObjectCreated:*"], suffix=".jpg")),
    "overlapping suffixes": (entry(SNS + "sns-topic-one", ["s3:ObjectCreated:*"], suffix="jpg"),
                             entry(SNS + "sns-topic-two", ["s3:ObjectCreated:Put"], suffix="pg")),
    "overlapping prefixes and suffixes": (
        entry(SNS + "sns-topic-one", ["s3:ObjectCreated:*"], prefix="images", suffix="jpg"),
        entry(SNS + "sns-topic-two", ["s3:ObjectCreated:Put"], suffix="jpg")),
    "prefix against suffix": (entry(SNS + "one", ["s3:ObjectCreated:Put"], prefix="images/"),
                              entry(SNS + "two", ["s3:ObjectCreated:Put"], suffix=".jpg")),
}


@pytest.mark.parametrize("a, b", VALID.values(), ids=VALID.keys())
def test_aws_valid_examples_do_not_overlap(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert not overlaps(a, b) and not overlaps(b, a)


@pytest.mark.parametrize("a, b", INVALID.values(), ids=INVALID.keys())
def test_aws_invalid_examples_overlap(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert overlaps(a, b) and overlaps(b, a)



def test_filter_rule_names_compare_as_aws_answers_them() -> None:
    """AWS answers Prefix/Suffix where its documents and Put say prefix/suffix (aws/aws-sdk#389)."""
    answered = RECORDED["LambdaFunctionConfigurations"][0]
    assert not overlaps(answered, entry(LAMBDA + "x", ["s3:ObjectTagging:Put"], prefix="logs/"))
    assert overlaps(answered, entry(LAMBDA + "x", ["s3:ObjectTagging:Put"], prefix="quarantine/2025/"))

def test_merge_keeps_eventbridge_and_every_foreign_entry_and_adds_only_ours() -> None:
    current = copy.deepcopy(RECORDED)
    merged = merged_configuration(current, QUEUE_ARN, OURS_ID)
    expected = {k: v for k, v in RECORDED.items() if k != "ResponseMetadata"}
    expected["QueueConfigurations"] = [*RECORDED["QueueConfigurations"], OURS]
    assert json.dumps(merged) == json.dumps(expected)  # byte for byte, order included
    assert merged is not None and merged["EventBridgeConfiguration"] == {} and "ResponseMetadata" not in merged
    assert current == RECORDED  # the answer it was given is left as read


def test_merge_is_idempotent() -> None:
    once = merged_configuration(RECORDED, QUEUE_ARN, OURS_ID)
    assert once is not None and merged_configuration(once, QUEUE_ARN, OURS_ID) is None


def test_merge_replaces_a_stale_entry_of_ours_in_place_of_adding_another() -> None:
    stale = {**OURS, "QueueArn": QUEUE_ARN + "-old"}
    current = {**RECORDED, "QueueConfigurations": [stale, *RECORDED["QueueConfigurations"]]}
    merged = merged_configuration(current, QUEUE_ARN, OURS_ID)
    assert merged is not None and merged["QueueConfigurations"] == [*RECORDED["QueueConfigurations"], OURS]
    assert merged_configuration(merged, QUEUE_ARN, OURS_ID) is None


def test_merge_onto_a_bucket_without_configuration_writes_only_ours() -> None:
    assert merged_configuration({}, QUEUE_ARN, OURS_ID) == {"QueueConfigurations": [OURS]}


def test_an_adopted_entry_that_already_serves_the_feed_is_left_alone() -> None:
    adopted = {"Id": "legacy-cloudtrail", "QueueArn": QUEUE_ARN, "Events": ["s3:ObjectCreated:*"]}
    assert merged_configuration({**RECORDED, "QueueConfigurations": [adopted]}, QUEUE_ARN, OURS_ID) is None


def test_a_truly_overlapping_foreign_entry_is_refused_by_id_and_target() -> None:
    target = "arn:aws:lambda:eu-west-2:123456789012:function:thumbnails"
    thumbnails = {
        "Id": "thumbnails",
        "LambdaFunctionArn": target,
        "Events": ["s3:ObjectCreated:Put"],
        "Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": "images/"}]}},
    }
    current = {**RECORDED, "LambdaFunctionConfigurations": [*RECORDED["LambdaFunctionConfigurations"], thumbnails]}
    with pytest.raises(NotificationOverlap, match=f"notification 'thumbnails' already sends .* to {re.escape(target)}"):
        merged_configuration(current, QUEUE_ARN, OURS_ID)


def test_a_foreign_entry_aimed_at_the_queue_is_adopted_and_its_events_widened() -> None:
    """Terraform's entry for the feed queue, narrower than ours: kept under its own Id, never a second entry."""
    terraform = {"Id": "tf-s3-event", "QueueArn": QUEUE_ARN, "Events": ["s3:ObjectCreated:Put"]}
    other = {"Id": "audit-removals", "QueueArn": f"{SQS}other", "Events": ["s3:ObjectRemoved:*"]}
    merged = merged_configuration({"QueueConfigurations": [terraform, other]}, QUEUE_ARN, OURS_ID)
    assert merged == {"QueueConfigurations": [{**terraform, "Events": ["s3:ObjectCreated:*"]}, other]}
    assert merged_configuration(merged, QUEUE_ARN, OURS_ID) is None
