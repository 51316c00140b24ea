"""The local stack as a fleet (issue 14, item 6): an Organization, three target accounts and one no target covers,
each reached only through its target role with the external id, each with its own platform; and the moto
server's fault injector (throttling as AWS answers it, latency), which a fleet run's tests and benchmark use.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from deployments.local.fleet import FLEET_EXTERNAL_ID, FLEET_ROLE, UNCOVERED_NAME
from deployments.local.stack import ACCOUNT_ID, REGION, Credentials, LocalStack
from socfeeds.aws import AwsClients, error_code, new_session
from socfeeds.settings import Settings
from socfeeds.targets import OrgAccount, declared_targets, discover, not_covered, target_settings

FLEET_SIZE = 3


@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("fleet"), with_prefect=False, fleet=FLEET_SIZE) as stack:
        yield stack


@pytest.fixture(scope="module")
def values(fleet_stack: LocalStack) -> dict[str, Any]:
    return dict(json.loads(fleet_stack.settings_file.read_text()))


@pytest.fixture
def faults(fleet_stack: LocalStack) -> Iterator[LocalStack]:
    """Faults live in the moto server: every test that sets one leaves none behind."""
    fleet_stack.aws.clear_faults()
    yield fleet_stack
    fleet_stack.aws.clear_faults()


def settings_of(values: dict[str, Any]) -> Settings:
    return Settings(**values)


def fleet_of(stack: LocalStack) -> Any:
    assert stack.fleet is not None
    return stack.fleet


def session(credentials: Credentials) -> boto3.session.Session:
    return new_session(credentials.access_key_id, credentials.secret_access_key, credentials.session_token or None,
                       REGION)


def test_the_organization_has_the_targets_and_one_account_no_target_covers(fleet_stack: LocalStack,
                                                                            values: dict[str, Any]) -> None:
    fleet = fleet_of(fleet_stack)
    organizations = fleet_stack.aws.client("organizations")
    assert organizations.describe_organization()["Organization"]["MasterAccountId"] == ACCOUNT_ID
    listed = {a["Id"] for a in organizations.list_accounts()["Accounts"]}
    targets = [a["account_id"] for a in values["fleet"]["accounts"]]
    assert len(targets) == FLEET_SIZE == len(set(targets)) and targets[0] == ACCOUNT_ID
    assert listed == {*targets, fleet.uncovered_account_id}
    assert [a["name"] for a in values["fleet"]["accounts"]] == ["tooling", "workload-a", "workload-b"]

    settings = settings_of(values)  # what the flows will find: discovery, then the one account not covered
    assert settings.fleet is not None and settings.fleet.organization.enabled
    found = discover(organizations, settings.fleet)
    assert not_covered(declared_targets(settings), found) == [OrgAccount(fleet.uncovered_account_id, UNCOVERED_NAME)]


def test_the_target_role_acts_in_its_account_with_the_external_id_only(fleet_stack: LocalStack) -> None:
    fleet = fleet_of(fleet_stack)
    for account in fleet.accounts:
        assumed = fleet.assume(account.account_id)
        identity = fleet_stack.aws.client("sts", assumed).get_caller_identity()
        assert identity["Account"] == account.account_id
        assert identity["Arn"] == f"arn:aws:sts::{account.account_id}:assumed-role/{FLEET_ROLE}/socfeeds-local"
        for external_id in (None, "not-" + FLEET_EXTERNAL_ID):
            with pytest.raises(ClientError) as refused:
                fleet.assume(account.account_id, external_id=external_id)
            assert error_code(refused.value) == "AccessDenied", account.name
    with pytest.raises(ClientError) as no_role:  # the uncovered account has no target role at all
        fleet.assume(UNCOVERED_NAME)
    assert error_code(no_role.value) == "AccessDenied"


def test_a_trust_naming_a_role_admits_that_roles_sessions_only(fleet_stack: LocalStack) -> None:
    """As the canary writer's trust names the flows' role in each account (deployments/local/trust_fidelity.py)."""
    fleet = fleet_of(fleet_stack)
    account = fleet.account("workload-a")
    iam = fleet.client(account.name, "iam")
    for name, trusted in (("fleet-test-trusts-target", account.role_arn),
                          ("fleet-test-trusts-other", f"arn:aws:iam::{account.account_id}:role/someone-else")):
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": trusted}, "Action": "sts:AssumeRole"}]}))
    sts = fleet_stack.aws.client("sts", fleet.assume(account.name))
    arn = f"arn:aws:iam::{account.account_id}:role/"
    assumed = sts.assume_role(RoleArn=arn + "fleet-test-trusts-target", RoleSessionName="chained")["AssumedRoleUser"]
    assert assumed["Arn"] == f"arn:aws:sts::{account.account_id}:assumed-role/fleet-test-trusts-target/chained"
    with pytest.raises(ClientError) as refused:
        sts.assume_role(RoleArn=arn + "fleet-test-trusts-other", RoleSessionName="chained")
    assert error_code(refused.value) == "AccessDenied"


def test_the_flows_client_factory_reaches_each_account_through_its_role(fleet_stack: LocalStack,
                                                                        values: dict[str, Any]) -> None:
    """socfeeds.aws as the flows use it: the tooling identity's clients, assuming each target's role."""
    settings = settings_of(values)
    assert fleet_stack.aws.admin is not None and settings.fleet is not None
    tooling = AwsClients.from_settings(settings, session=session(fleet_stack.aws.admin))
    external_id = settings.fleet.external_id.get_secret_value() if settings.fleet.external_id else None
    for target in declared_targets(settings):
        assert target.assume is not None
        clients = tooling.assume(target.assume, target.region, external_id, "fleet-test",
                                 settings.fleet.session_seconds)
        assert clients.sts.get_caller_identity()["Account"] == target.account_id


def test_each_account_has_its_own_platform_and_nobody_elses(fleet_stack: LocalStack, values: dict[str, Any]) -> None:
    fleet = fleet_of(fleet_stack)
    vpcs = {a.account_id: a.vpc_id for a in fleet.accounts}
    clusters = {a.account_id: a.cluster for a in fleet.accounts}
    assert len(set(vpcs.values())) == len(set(clusters.values())) == FLEET_SIZE
    token_secret = values["firehose_feeds"]["eks-control-plane"]["token_secret_name"]
    for account in fleet.accounts:
        assumed = fleet.assume(account.account_id)
        seen = {v["VpcId"] for v in fleet_stack.aws.client("ec2", assumed).describe_vpcs()["Vpcs"]}
        assert account.vpc_id in seen and not seen & (set(vpcs.values()) - {account.vpc_id})
        eks = fleet_stack.aws.client("eks", assumed)
        assert eks.describe_cluster(name=account.cluster)["cluster"]["arn"].split(":")[4] == account.account_id
        for other in set(clusters.values()) - {account.cluster}:
            with pytest.raises(ClientError) as missing:
                eks.describe_cluster(name=other)
            assert error_code(missing.value) == "ResourceNotFoundException"
        secret = fleet_stack.aws.client("secretsmanager", assumed).describe_secret(SecretId=token_secret)
        assert secret["ARN"].split(":")[4] == account.account_id


def test_each_accounts_settings_name_its_own_platform_and_buckets(fleet_stack: LocalStack,
                                                                  values: dict[str, Any]) -> None:
    fleet = fleet_of(fleet_stack)
    settings = settings_of(values)
    assert settings.fleet is not None and settings.fleet.role_name == FLEET_ROLE
    assert settings.fleet.external_id is not None and settings.fleet.external_id.get_secret_value() == FLEET_EXTERNAL_ID
    owners: dict[str, str] = {}
    for target in declared_targets(settings):
        rendered = target_settings(settings, target)
        account = fleet.account(target.account_id)
        assert (rendered.account_id, rendered.vpc_id, rendered.eks_cluster_name) == (
            account.account_id, account.vpc_id, account.cluster)
        buckets = [b for feed in rendered.s3_feeds.values() for b in feed.buckets]
        buckets += [feed.error_bucket for feed in rendered.firehose_feeds.values()]
        assert all(account.account_id in bucket for bucket in buckets), buckets
        for bucket in buckets:
            assert owners.setdefault(bucket, account.account_id) == account.account_id
    assert values["s3_feeds"]["cloudfront"]["bucket"].endswith("{account_id}")  # unique per account, fleet only


def test_xsiam_collects_every_accounts_feed_with_that_accounts_reader(fleet_stack: LocalStack,
                                                                      values: dict[str, Any]) -> None:
    """Provisioned as the flows' tasks do it in each account, through the target role; then one object per
    account arrives in XSIAM from that account's data source, read with that account's reader key."""
    from tasks.buckets import ensure_bucket
    from tasks.notifications import ensure_notification
    from tasks.queues import ensure_queues
    from tasks.reader import ensure_reader

    fleet, xsiam = fleet_of(fleet_stack), fleet_stack.xsiam
    assert xsiam is not None and fleet_stack.aws.admin is not None
    settings = settings_of(values)
    assert settings.fleet is not None and settings.fleet.external_id is not None
    tooling = AwsClients.from_settings(settings, session=session(fleet_stack.aws.admin))
    marker = f"fleet-{time.time_ns()}"
    for target in declared_targets(settings):
        assert target.assume is not None
        rendered = target_settings(settings, target)
        aws = tooling.assume(target.assume, target.region, settings.fleet.external_id.get_secret_value(),
                             "fleet-test", settings.fleet.session_seconds)
        ensure_reader.fn(aws, rendered, False)
        for step in (ensure_bucket, ensure_queues, ensure_notification):
            step.fn(aws, rendered, "application-logs", False)
    keys = fleet_stack.hand_reader_keys_to_xsiam()
    assert set(keys) == set(fleet.account_ids) and all(keys.values()) and len(set(keys.values())) == FLEET_SIZE
    for target in declared_targets(settings):
        bucket = target_settings(settings, target).s3_feeds["application-logs"].bucket
        fleet.client(target.account_id, "s3").put_object(
            Bucket=bucket, Key=f"logs/2026/11/28/{target.name}.log",
            Body=json.dumps({"log": f"{marker} from {target.name}"}).encode() + b"\n")

    expected = {f"{a.name}/application-logs" for a in fleet.accounts}

    def arrived() -> set[str]:
        return {e["source"] for e in xsiam.events("amazon_aws_raw") if marker in json.dumps(e["raw"])}

    def explain() -> str:
        failures = [f for f in xsiam.failures() if "application-logs" in f["component"] or "reload" in f["component"]]
        return f"arrived from {sorted(arrived())}, expected {sorted(expected)}; failures {failures[-4:]}"

    poll_until(lambda: arrived() == expected, 30, explain)


def test_a_target_role_can_hold_the_least_privilege_policy_instead(fleet_stack: LocalStack,
                                                                    values: dict[str, Any]) -> None:
    """socfeeds.target_role's provision policy, rendered from the account's settings, in place of Allow *:
    what each run starts with (socfeeds.resolve) still works, a call outside it is refused."""
    from socfeeds.resolve import resolve
    from socfeeds.target_role import provision_policy

    fleet = fleet_of(fleet_stack)
    account = fleet.account("workload-b")
    settings = settings_of(values)
    [target] = [t for t in declared_targets(settings) if t.account_id == account.account_id]
    rendered = target_settings(settings, target)
    try:
        fleet.put_role_policies(values, "provision", [account.name])
        held = fleet.client(account.name, "iam").get_role_policy(RoleName=FLEET_ROLE, PolicyName=FLEET_ROLE)
        assert held["PolicyDocument"] == json.loads(json.dumps(provision_policy(rendered)))
        assumed = fleet.assume(account.name)
        resolve(rendered, AwsClients.from_settings(rendered, session=session(assumed)))
        with pytest.raises(ClientError) as refused:
            fleet_stack.aws.client("iam", assumed).list_users()
        assert error_code(refused.value) == "AccessDenied"
        assert fleet.role_policies[account.account_id] == "provision"
    finally:
        fleet.put_role_policies(values, "admin", [account.name])


# --- CloudTrail as AWS has it (deployments/local/cloudtrail_fidelity.py): each refusal, then the same call accepted


def trail_writes(bucket: str, trail_arn: str, *folders: str) -> dict[str, Any]:
    principal, source = {"Service": "cloudtrail.amazonaws.com"}, {"aws:SourceArn": trail_arn}
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": principal, "Action": "s3:GetBucketAcl", "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringEquals": source}},
        {"Effect": "Allow", "Principal": principal, "Action": "s3:PutObject",
         "Resource": [f"arn:aws:s3:::{bucket}/AWSLogs/{folder}/*" for folder in folders],
         "Condition": {"StringEquals": {**source, "s3:x-amz-acl": "bucket-owner-full-control"}}}]}


def refused_with(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as refused:
        call()
    return error_code(refused.value)


@pytest.fixture
def trail_bucket(fleet_stack: LocalStack) -> Iterator[str]:
    """A bucket of workload-a (the archive); the trails a test made are deleted after it."""
    fleet = fleet_of(fleet_stack)
    bucket = f"fidelity-trails-{uuid.uuid4().hex[:12]}"
    fleet.client("workload-a", "s3").create_bucket(Bucket=bucket,
                                                   CreateBucketConfiguration={"LocationConstraint": REGION})
    yield bucket
    for name in ("tooling", "workload-b"):
        cloudtrail = fleet.client(name, "cloudtrail")
        for trail in cloudtrail.describe_trails()["trailList"]:
            if trail["S3BucketName"] == bucket:
                cloudtrail.delete_trail(Name=trail["Name"])


@contextmanager
def cloudtrail_trusted_access_off(fleet_stack: LocalStack) -> Iterator[None]:
    """CloudTrail's trusted access in the Organization turned off for the block, on again after it."""
    organizations = fleet_of(fleet_stack).client("tooling", "organizations")
    organizations.disable_aws_service_access(ServicePrincipal="cloudtrail.amazonaws.com")
    try:
        yield
    finally:
        organizations.enable_aws_service_access(ServicePrincipal="cloudtrail.amazonaws.com")


def admit(fleet_stack: LocalStack, bucket: str, policy: dict[str, Any]) -> None:
    fleet_of(fleet_stack).client("workload-a", "s3").put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def test_a_trail_writes_another_accounts_bucket_only_as_its_policy_admits(fleet_stack: LocalStack,
                                                                           trail_bucket: str) -> None:
    member = fleet_of(fleet_stack).account("workload-b")
    cloudtrail = fleet_of(fleet_stack).client(member.name, "cloudtrail")
    arn = f"arn:aws:cloudtrail:{REGION}:{member.account_id}:trail/fidelity-member"

    def create(bucket: str = trail_bucket, **extra: Any) -> Any:
        return cloudtrail.create_trail(Name="fidelity-member", S3BucketName=bucket, **extra)

    assert refused_with(lambda: create(f"{trail_bucket}-none")) == "S3BucketDoesNotExistException"
    assert refused_with(create) == "InsufficientS3BucketPolicyException", "no policy admits the trail"
    admit(fleet_stack, trail_bucket, trail_writes(trail_bucket, f"{arn}-other", member.account_id))
    assert refused_with(create) == "InsufficientS3BucketPolicyException", "the policy admits another trail"
    admit(fleet_stack, trail_bucket, trail_writes(trail_bucket, arn, member.account_id))
    assert refused_with(lambda: create(S3KeyPrefix="member")) == "InsufficientS3BucketPolicyException", \
        "the policy admits AWSLogs/ at the bucket's root, not under a key prefix"
    assert create()["S3BucketName"] == trail_bucket, "the bucket is another account's, its policy admits the trail"
    assert refused_with(lambda: cloudtrail.update_trail(Name="fidelity-member", S3KeyPrefix="moved")) \
        == "InsufficientS3BucketPolicyException", "moving the trail is checked as creating it"
    assert cloudtrail.update_trail(Name="fidelity-member", IsMultiRegionTrail=True)["IsMultiRegionTrail"]


def test_an_organization_trail_is_the_management_accounts_with_trusted_access(fleet_stack: LocalStack,
                                                                                trail_bucket: str) -> None:
    fleet = fleet_of(fleet_stack)
    management, member = fleet.account("tooling"), fleet.account("workload-b")
    organization = fleet.organization_id
    for account in (management, member):
        arn = f"arn:aws:cloudtrail:{REGION}:{account.account_id}:trail/fidelity-org"
        admit(fleet_stack, trail_bucket, trail_writes(trail_bucket, arn, account.account_id, organization))
    org_trail = {"Name": "fidelity-org", "S3BucketName": trail_bucket, "IsOrganizationTrail": True,
                 "IsMultiRegionTrail": True}
    assert refused_with(lambda: fleet.client(member.name, "cloudtrail").create_trail(**org_trail)) \
        == "NotOrganizationMasterAccountException"
    cloudtrail = fleet.client(management.name, "cloudtrail")
    arn = f"arn:aws:cloudtrail:{REGION}:{management.account_id}:trail/fidelity-org"
    admit(fleet_stack, trail_bucket, trail_writes(trail_bucket, arn, management.account_id))
    assert refused_with(lambda: cloudtrail.create_trail(**org_trail)) == "InsufficientS3BucketPolicyException", \
        "the members' folder AWSLogs/<organization id>/ is not admitted"
    admit(fleet_stack, trail_bucket, trail_writes(trail_bucket, arn, management.account_id, organization))
    with cloudtrail_trusted_access_off(fleet_stack):
        assert refused_with(lambda: cloudtrail.create_trail(**org_trail)) == "CloudTrailAccessNotEnabledException"
    assert cloudtrail.create_trail(**org_trail)["IsOrganizationTrail"]


# --- fault injection (deployments/local/faults.py), in the account no target covers: no collector polls it ---


def sandbox(stack: LocalStack) -> tuple[str, Credentials]:
    uncovered = fleet_of(stack).uncovered
    assert uncovered is not None
    return uncovered.account_id, uncovered.operator


def raw_client(stack: LocalStack, service: str, credentials: Credentials, attempts: int) -> Any:
    """A client with botocore's standard retries and `attempts` tries in all (1: no retry)."""
    return cast(Any, boto3).client(
        service, region_name=REGION, endpoint_url=stack.aws.endpoint_url,
        aws_access_key_id=credentials.access_key_id, aws_secret_access_key=credentials.secret_access_key,
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}, s3={"addressing_style": "path"}))


# service (signing name), a cheap call, the code AWS answers throttling with in that service's protocol
CALLS: list[tuple[str, str, Callable[[Any], Any], str]] = [
    ("iam", "iam", lambda c: c.list_users(), "Throttling"),  # query
    ("sts", "sts", lambda c: c.get_caller_identity(), "Throttling"),  # query
    ("sqs", "sqs", lambda c: c.list_queues(), "ThrottlingException"),  # JSON (query-compatible)
    ("ec2", "ec2", lambda c: c.describe_vpcs(), "RequestLimitExceeded"),  # EC2 query, HTTP 503
    ("logs", "logs", lambda c: c.describe_log_groups(), "ThrottlingException"),  # JSON
    ("kms", "kms", lambda c: c.list_keys(), "ThrottlingException"),  # JSON
    ("eks", "eks", lambda c: c.list_clusters(), "ThrottlingException"),  # REST-JSON
    ("cloudwatch", "monitoring", lambda c: c.list_metrics(), "ThrottlingException"),  # RPC v2 CBOR
    ("s3", "s3", lambda c: c.list_buckets(), "SlowDown"),  # REST-XML, HTTP 503
]


@pytest.mark.parametrize(("client_name", "service", "call", "code"), CALLS, ids=[c[0] for c in CALLS])
def test_a_throttled_call_is_refused_as_aws_refuses_it_and_retried(
        faults: LocalStack, client_name: str, service: str, call: Callable[[Any], Any], code: str) -> None:
    account_id, operator = sandbox(faults)
    faults.aws.throttle(account_id, service, 1)
    with pytest.raises(ClientError) as throttled:
        call(raw_client(faults, client_name, operator, attempts=1))
    assert error_code(throttled.value) == code

    faults.aws.throttle(account_id, service, 1)  # botocore retries (once: its backoff is up to 1 s, then 2 s)
    answer = call(raw_client(faults, client_name, operator, attempts=3))
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert faults.aws.fault_counts()["throttled"] == {f"{account_id}/{service}": 2}


def test_throttling_is_per_account_and_service(faults: LocalStack) -> None:
    account_id, operator = sandbox(faults)
    faults.aws.throttle(account_id, "iam", 5)
    assert raw_client(faults, "sts", operator, attempts=1).get_caller_identity()["Account"] == account_id
    assert faults.aws.client("iam").list_users()["ResponseMetadata"]["RetryAttempts"] == 0  # the tooling account
    faults.aws.throttle(account_id, "*", 1)  # every service of the account: the next call, whatever it is
    with pytest.raises(ClientError) as throttled:
        raw_client(faults, "sts", operator, attempts=1).get_caller_identity()
    assert error_code(throttled.value) == "Throttling"
    faults.aws.clear_faults()
    assert raw_client(faults, "iam", operator, attempts=1).list_users()["ResponseMetadata"]["RetryAttempts"] == 0
    assert faults.aws.fault_counts() == {"faults": [], "throttled": {}, "delayed": {}}


def test_latency_delays_every_request_of_the_account_and_no_other(faults: LocalStack) -> None:
    """What is counted, never how long it took: the server says which requests it delayed."""
    account_id, operator = sandbox(faults)
    faults.aws.slow_down(account_id, 20)
    sts, s3 = raw_client(faults, "sts", operator, 1), raw_client(faults, "s3", operator, 1)
    for _ in range(3):
        sts.get_caller_identity()
    s3.list_buckets()
    faults.aws.client("sts").get_caller_identity()  # the tooling account: not delayed
    counts = faults.aws.fault_counts()
    assert counts["delayed"] == {account_id: 4}
    assert counts["faults"] == [{"account_id": account_id, "service": "*", "throttle_calls": 0, "latency_ms": 20}]
    faults.aws.slow_down(account_id, 0)  # removes it
    assert faults.aws.fault_counts()["faults"] == []


def poll_until(ready: Callable[[], bool], deadline_s: float, explain: Callable[[], str]) -> None:
    """Wait for a condition with a deadline, never a fixed sleep; the failure says what was seen."""
    deadline = time.monotonic() + deadline_s
    interval = 0.1
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(explain())
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def test_the_fleet_needs_at_least_one_account(tmp_path: Path) -> None:
    from deployments.local.processes import StackError

    with pytest.raises(StackError):
        LocalStack(tmp_path, with_prefect=False, fleet=-1)


def test_the_trail_plan_reports_what_aws_would_refuse_an_organization_trail_for(fleet_stack: LocalStack,
                                                                                values: dict[str, Any]) -> None:
    """The management account's organization trail (tooling, into the archive): trusted access off, or settings
    naming another Organization, is a finding with the person's fix, and provision attempts nothing."""
    from socfeeds.report import Status
    from tasks.sources import check_source, ensure_source

    fleet = fleet_of(fleet_stack)
    settings = settings_of(values)
    [target] = [t for t in declared_targets(settings) if t.account_id == ACCOUNT_ID]
    rendered = target_settings(settings, target)
    assert "cloudtrail" in rendered.delivering_feeds, "the fleet's shape: the trail writes the archive's bucket"
    aws = AwsClients.from_settings(rendered, session=session(fleet.assume(ACCOUNT_ID)))

    def organization_finding(of: Settings) -> Any:
        [found] = [f for f in check_source.fn(aws, of, "cloudtrail") if f.check == "trail organization"]
        return found

    with cloudtrail_trusted_access_off(fleet_stack):
        off = organization_finding(rendered)
        assert off.status is Status.FAIL and "trusted access is not enabled" in off.detail
        assert "enable-aws-service-access --service-principal cloudtrail.amazonaws.com" in off.fix
        assert [c.applied for c in ensure_source.fn(aws, rendered, "cloudtrail", False)] == [False]
    assert organization_finding(rendered).status is Status.PASS
    feed = rendered.delivering_feeds["cloudtrail"]
    elsewhere = rendered.model_copy(update={"delivering_feeds": {"cloudtrail": feed.model_copy(update={
        "source": feed.source.model_copy(update={"organization_id": "o-zzzzzzzzzz"})})}})  # type: ignore[union-attr]
    wrong = organization_finding(elsewhere)
    assert wrong.status is Status.FAIL and f"is in {fleet.organization_id}, not o-zzzzzzzzzz" in wrong.detail
    assert wrong.fix == f"set s3_feeds.cloudtrail.source.organization_id to {fleet.organization_id}"


def test_provision_repairs_an_organization_trail_verify_finds_drifted(fleet_stack: LocalStack,
                                                                       values: dict[str, Any]) -> None:
    """The archive's bucket (its policy admitting the trail), then the management account's organization trail;
    the trail turned into an account trail by hand is a verify failure, and provision turns it back."""
    from socfeeds.report import Status
    from tasks.buckets import ensure_bucket
    from tasks.sources import check_source, ensure_source

    fleet = fleet_of(fleet_stack)
    settings = settings_of(values)
    rendered = {t.account_id: target_settings(settings, t) for t in declared_targets(settings)}
    archive = fleet.account("workload-a")

    def clients(account_id: str) -> AwsClients:
        return AwsClients.from_settings(rendered[account_id], session=session(fleet.assume(account_id)))

    ensure_bucket.fn(clients(archive.account_id), rendered[archive.account_id], "cloudtrail", False)
    management, aws = rendered[ACCOUNT_ID], clients(ACCOUNT_ID)
    ensure_source.fn(aws, management, "cloudtrail", False)
    trail = management.delivering_feeds["cloudtrail"].source.trail  # type: ignore[union-attr]
    cloudtrail = fleet.client("tooling", "cloudtrail")
    assert cloudtrail.get_trail(Name=trail)["Trail"]["IsOrganizationTrail"]
    try:
        cloudtrail.update_trail(Name=trail, IsOrganizationTrail=False)
        [drift] = [f for f in check_source.fn(aws, management, "cloudtrail") if f.check == "trail settings"]
        assert drift.status is Status.FAIL and "IsOrganizationTrail" in drift.detail
        assert [(c.action, c.applied) for c in ensure_source.fn(aws, management, "cloudtrail", False)] == [
            ("update trail", True)]
        assert cloudtrail.get_trail(Name=trail)["Trail"]["IsOrganizationTrail"]
        assert [f for f in check_source.fn(aws, management, "cloudtrail") if f.status is not Status.PASS] == []
    finally:
        cloudtrail.delete_trail(Name=trail)
