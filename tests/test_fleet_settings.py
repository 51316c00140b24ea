"""A fleet is declared once: every account's settings render from the shared catalog with its own names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from test_settings import BASE, feed, no_settings_env  # noqa: F401 (the fixture keeps the environment out)

from deployments.local.stack import LocalAws
from flows._fleet import ChildOutcome, Fleet, summary
from socfeeds.aws import AwsClients
from socfeeds.policies import source_write_statements
from socfeeds.settings import Settings, SettingsError, log_key_prefix
from socfeeds.targets import (
    OrgAccount,
    Target,
    declared_targets,
    enrolled,
    lists_organization,
    not_covered,
    select,
    target_settings,
)

ARCHIVE, MEMBER = "222222222222", "333333333333"
FLOW = {"kind": "vpc_flow_log"}


def fleet_settings(accounts: list[dict[str, Any]], **values: Any) -> Settings:
    catalog = {"app": feed(), "flows": feed(bucket="flows-{account_name}-{region}", queue="flows", source=FLOW)}
    return Settings(**{**BASE, "s3_feeds": catalog, "fleet": {"external_id": "x", "accounts": accounts}, **values})


def test_a_single_account_file_is_a_fleet_of_one_with_the_flows_own_credentials() -> None:
    settings = Settings(**BASE)
    [target] = declared_targets(settings)
    assert (target.account_id, target.region, target.assume) == ("123456789012", "eu-west-2", None)
    assert target_settings(settings, target) is settings


def test_each_account_renders_the_shared_catalog_with_its_own_names_regions_and_overrides() -> None:
    settings = fleet_settings([
        {"account_id": ARCHIVE, "name": "log-archive", "regions": ["eu-west-2", "eu-west-1"]},
        {"account_id": MEMBER, "overrides": {"vpc_id": "vpc-0abcdef0123456789",
                                             "s3_feeds": {"app": {"retention_days": 90}}}}])
    targets = declared_targets(settings)
    assert [t.key for t in targets] == [f"{ARCHIVE}/eu-west-2", f"{ARCHIVE}/eu-west-1", f"{MEMBER}/eu-west-2"]
    assert targets[0].assume == f"arn:aws:iam::{ARCHIVE}:role/socfeeds-target"
    archive_west1 = target_settings(settings, targets[1])
    assert archive_west1.s3_feeds["flows"].bucket == "flows-log-archive-eu-west-1"
    assert archive_west1.s3_feeds["app"].bucket == f"my-logs-{ARCHIVE}"
    member = target_settings(settings, targets[2])
    assert member.account_id == MEMBER and member.vpc_id == "vpc-0abcdef0123456789"
    assert member.s3_feeds["app"].retention_days == 90
    assert member.s3_feeds["flows"].bucket == f"flows-{MEMBER}-eu-west-2"
    assert settings.s3_feeds["app"].retention_days == 30, "an override changes only its account"


def test_clusters_repeat_the_firehose_feeds_and_feeds_choose_from_the_catalog() -> None:
    eks = {"eks": {"delivery_stream": "cp-{cluster}"}}
    expanded = fleet_settings([{"account_id": MEMBER, "clusters": ["blue", "green"]}], firehose_feeds=eks)
    rendered = target_settings(expanded, declared_targets(expanded)[0])
    assert {n: f.delivery_stream for n, f in rendered.firehose_feeds.items()} == {
        "eks-blue": "cp-blue", "eks-green": "cp-green"}
    chosen = fleet_settings([{"account_id": MEMBER, "clusters": ["blue", "green"], "feeds": ["app", "eks-blue"]}],
                            firehose_feeds=eks)
    some = target_settings(chosen, declared_targets(chosen)[0])
    assert (list(some.s3_feeds), list(some.firehose_feeds)) == (["app"], ["eks-blue"])
    wrong = fleet_settings([{"account_id": MEMBER, "clusters": ["blue", "green"], "feeds": ["eks"]}],
                           firehose_feeds=eks)
    with pytest.raises(SettingsError, match=r"feeds \['eks'\] are not in the catalog"):
        target_settings(wrong, declared_targets(wrong)[0])


def test_deploy_offers_every_accounts_feed_names_as_the_feeds_choices() -> None:
    from deployments.deploy import declared_feed_names

    eks = {"eks": {"delivery_stream": "cp-{cluster}"}}
    settings = fleet_settings([{"account_id": ARCHIVE}, {"account_id": MEMBER, "clusters": ["blue", "green"]}],
                              firehose_feeds=eks)
    assert declared_feed_names(settings) == ["app", "flows", "eks", "eks-blue", "eks-green"]
    assert declared_feed_names(Settings(**BASE)) == Settings(**BASE).feed_names, "a single account: its own"


def test_an_override_that_breaks_an_account_is_refused_naming_the_account_and_field() -> None:
    settings = fleet_settings([{"account_id": MEMBER, "name": "payments", "overrides": {"vpc_id": "subnet-1"}}])
    with pytest.raises(SettingsError, match=r"fleet account payments \(333333333333/eu-west-2\): 1 invalid .*\n- "
                                            r"vpc_id: 'subnet-1' is not a VPC id"):
        target_settings(settings, declared_targets(settings)[0])


@pytest.mark.parametrize(("accounts", "refusal"), [
    ([{"account_id": "1234"}], "is not a 12-digit AWS account id"),
    ([{"account_id": MEMBER}, {"account_id": MEMBER}], "declared more than once"),
    ([{"account_id": MEMBER, "overrides": {"account_id": ARCHIVE}}], "overrides cannot set"),
])
def test_a_bad_fleet_is_refused(accounts: list[dict[str, Any]], refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        fleet_settings(accounts)


def test_accounts_are_chosen_by_id_name_or_id_and_region_and_unknown_ones_refused() -> None:
    targets = declared_targets(fleet_settings([{"account_id": ARCHIVE, "name": "log-archive"},
                                               {"account_id": MEMBER}]))
    assert [t.account_id for t in select(targets, ["log-archive"])] == [ARCHIVE]
    assert [t.account_id for t in select(targets, [f"{MEMBER}/eu-west-2"])] == [MEMBER]
    with pytest.raises(SettingsError, match=r"unknown account\(s\) \['nope'\]"):
        select(targets, ["nope"])
    with pytest.raises(SettingsError, match="an empty list selects no account"):
        select(targets, [])


def test_organization_accounts_without_a_target_are_not_covered_unless_enrolled() -> None:
    settings = fleet_settings([{"account_id": MEMBER}])
    found = [OrgAccount(MEMBER, "payments"), OrgAccount(ARCHIVE, "sandbox")]
    assert not_covered(enrolled(settings, found), found) == [OrgAccount(ARCHIVE, "sandbox")]
    enrolling = fleet_settings([{"account_id": MEMBER}], fleet={
        "external_id": "x", "accounts": [{"account_id": MEMBER}], "organization": {"enabled": True, "enroll": True}})
    targets = enrolled(enrolling, found)
    assert [t.account_id for t in targets] == [MEMBER, ARCHIVE] and not not_covered(targets, found)
    assert targets[1] == Target(ARCHIVE, "sandbox", "eu-west-2", None, f"arn:aws:iam::{ARCHIVE}:role/socfeeds-target")


def test_only_a_run_of_every_account_or_of_one_only_discovery_enrolls_lists_the_organization() -> None:
    discovering = {"external_id": "x", "accounts": [{"account_id": MEMBER, "name": "payments"}],
                   "organization": {"enabled": True}}
    settings = fleet_settings([{"account_id": MEMBER}], fleet=discovering)
    assert lists_organization(settings, None), "every account: the run reports those not covered"
    assert not lists_organization(settings, ["payments"]), "a child run names declared accounts"
    enrolling = fleet_settings([{"account_id": MEMBER}], fleet={
        **discovering, "organization": {"enabled": True, "enroll": True}})
    assert not lists_organization(enrolling, [MEMBER, f"{MEMBER}/eu-west-2"])
    assert lists_organization(enrolling, [MEMBER, ARCHIVE]), "only the Organization knows the enrolled one"
    assert not lists_organization(fleet_settings([{"account_id": MEMBER}]), None), "discovery off"


def test_a_central_archive_bucket_admits_each_member_and_a_member_wires_only_its_source() -> None:
    central = f"flows-archive-{ARCHIVE}"
    settings = fleet_settings([
        {"account_id": ARCHIVE, "overrides": {"s3_feeds": {"flows": {"bucket": central, "source_accounts": [MEMBER]}}}},
        {"account_id": MEMBER, "overrides": {"s3_feeds": {"flows": {"bucket": central, "bucket_account": ARCHIVE}}}}])
    archive, member = (target_settings(settings, t) for t in declared_targets(settings))
    write = next(s for s in source_write_statements(archive.s3_feeds["flows"], archive)
                 if s["Sid"] == "SocfeedsLogDeliveryWrite")
    assert write["Resource"] == [f"arn:aws:s3:::{central}/AWSLogs/{account}/*" for account in (ARCHIVE, MEMBER)]
    assert write["Condition"]["StringEquals"]["aws:SourceAccount"] == [ARCHIVE, MEMBER]
    assert "flows" not in member.s3_feeds and member.delivering_feeds["flows"].bucket == central
    assert member.select_feeds(["flows"]) == ["flows"] and member.s3_feed("flows").bucket_account == ARCHIVE


def test_an_accounts_feed_list_may_name_a_feed_it_delivers_into_another_accounts_bucket() -> None:
    settings = fleet_settings([{"account_id": MEMBER, "feeds": ["flows"], "overrides": {"s3_feeds": {"flows": {
        "bucket": f"flows-archive-{ARCHIVE}", "bucket_account": ARCHIVE}}}}])
    [member] = (target_settings(settings, t) for t in declared_targets(settings))
    assert member.feed_names == ["flows"] and list(member.delivering_feeds) == ["flows"]
    with pytest.raises(SettingsError, match=r"feeds \['nope'\] are not in the catalog"):
        target_settings(fleet_settings([{"account_id": MEMBER, "feeds": ["nope"]}]),
                        declared_targets(fleet_settings([{"account_id": MEMBER, "feeds": ["nope"]}]))[0])


def test_only_log_delivery_sources_and_organization_trails_deliver_across_accounts() -> None:
    with pytest.raises(ValueError, match="cross-account delivery is modelled for flow logs, resolver query logs "
                       "and organization trails"):
        Settings(**{**BASE, "s3_feeds": {"app": feed(source_accounts=[MEMBER])}})
    with pytest.raises(ValueError, match="bucket_account: a trail writes into another account's bucket here only "
                       "as an organization trail"):
        Settings(**{**BASE, "s3_feeds": {"app": feed(source={"kind": "cloudtrail"}, bucket_account=MEMBER)}})
    with pytest.raises(ValueError, match="an organization trail lives in one account"):
        Settings(**{**BASE, "s3_feeds": {"app": feed(source={**ORG_TRAIL, "organization_id": ORG},
                                                     source_accounts=[MEMBER, ARCHIVE])}})
    with pytest.raises(ValueError, match=r"s3_feeds\.app\.source\.cloudtrail\.organization_id"):
        Settings(**{**BASE, "s3_feeds": {"app": feed(source={**ORG_TRAIL, "organization_id": "org-1"})}})


ORG, ORG_TRAIL = "o-a1b2c3d4e5", {"kind": "cloudtrail", "trail_name": "org-trail"}


def test_an_organization_trail_writes_the_archive_from_the_management_account() -> None:
    central = f"trail-archive-{ARCHIVE}"
    trail = {"bucket": central, "source": {"organization_id": ORG}}
    settings = fleet_settings([
        {"account_id": MEMBER, "name": "management", "overrides": {"s3_feeds": {"trail": {
            **trail, "bucket_account": ARCHIVE}}}},
        {"account_id": ARCHIVE, "overrides": {"s3_feeds": {"trail": {**trail, "source_accounts": [MEMBER]}}}}],
        s3_feeds={"trail": feed(bucket="trail-{account_id}", queue="trail", source=ORG_TRAIL)})
    management, archive = (target_settings(settings, t) for t in declared_targets(settings))
    wired = management.delivering_feeds["trail"]
    assert "trail" not in management.s3_feeds and wired.wires_source(MEMBER), "the trail is made where it lives"
    received = archive.s3_feeds["trail"]
    assert not received.wires_source(ARCHIVE) and received.trail_account(ARCHIVE) == MEMBER
    acl, write = source_write_statements(received, archive)
    trail_arn = f"arn:aws:cloudtrail:eu-west-2:{MEMBER}:trail/org-trail"
    assert acl["Condition"]["StringEquals"]["aws:SourceArn"] == trail_arn, "the trail of the management account"
    assert write["Resource"] == [f"arn:aws:s3:::{central}/AWSLogs/{account}/*" for account in (MEMBER, ORG)]
    assert write["Condition"]["StringEquals"] == {"s3:x-amz-acl": "bucket-owner-full-control",
                                                  "aws:SourceArn": trail_arn}
    assert log_key_prefix(received, ARCHIVE) == "AWSLogs/", "a notification filter may not hide members' keys"
    elsewhere = received.model_copy(update={"source": received.source.model_copy(  # type: ignore[union-attr]
        update={"home_region": "us-east-1"})})
    assert elsewhere.trail_arn(ARCHIVE, "eu-west-2") == f"arn:aws:cloudtrail:us-east-1:{MEMBER}:trail/org-trail", \
        "a trail homed in another region is named by its own ARN"
    with pytest.raises(ValueError, match=r"home_region\n.*unknown AWS region 'mars-1'"):
        Settings(**{**BASE, "s3_feeds": {"app": feed(source={**ORG_TRAIL, "home_region": "mars-1"})}})


def test_the_matrix_shows_an_account_without_the_trail_feed_as_logged_by_the_organization_trail() -> None:
    trail = {"bucket": f"trail-archive-{ARCHIVE}", "source": {"organization_id": ORG}}
    other = "444444444444"
    settings = fleet_settings([
        {"account_id": MEMBER, "overrides": {"s3_feeds": {"trail": {**trail, "bucket_account": ARCHIVE}}}},
        {"account_id": ARCHIVE, "overrides": {"s3_feeds": {"trail": {**trail, "source_accounts": [MEMBER]}}}},
        {"account_id": other, "feeds": ["app"]}],
        s3_feeds={"app": feed(), "trail": feed(bucket="trail-{account_id}", queue="trail", source=ORG_TRAIL)})
    targets = declared_targets(settings)
    fleet = Fleet(settings, AwsClients(boto3.session.Session(), "eu-west-2"), targets, [],
                  {t.key: target_settings(settings, t) for t in targets})
    assert fleet.organization_trails == {"trail"}
    outcomes = [ChildOutcome(t, "run", "Completed", "", {name: ("pass", "") for name in fleet.catalog(t)})
                for t in targets]
    markdown, message = summary("verify-feeds", fleet, outcomes)
    assert f"| {other}/eu-west-2 | run (Completed) | pass | not declared | organization trail |" in markdown
    assert message is None, "an account the organization trail logs is not failing"


def _fleet(uncovered: str) -> Fleet:
    settings = fleet_settings([{"account_id": ARCHIVE, "name": "log-archive"}, {"account_id": MEMBER}], fleet={
        "external_id": "x", "accounts": [{"account_id": ARCHIVE, "name": "log-archive"}, {"account_id": MEMBER}],
        "organization": {"enabled": True, "uncovered": uncovered}}, firehose_feeds={})  # catalog: app, flows
    targets = declared_targets(settings)
    return Fleet(settings, AwsClients(boto3.session.Session(), "eu-west-2"), targets,
                 [OrgAccount("444444444444", "sandbox")], {t.key: target_settings(settings, t) for t in targets})


def test_the_matrix_puts_failing_accounts_first_and_a_crashed_child_is_its_accounts_row() -> None:
    fleet = _fleet("warn")
    archive, member = fleet.targets
    outcomes = [ChildOutcome(archive, "calm-cat", "Completed", "", {"app": ("pass", ""), "flows": ("warn", "")}),
                ChildOutcome(member, "lost-dog", "Crashed", "the process died", {})]
    markdown, message = summary("verify-feeds", fleet, outcomes)
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0] == f"| {MEMBER}/eu-west-2 | lost-dog (Crashed) | missing | missing |", "failing first"
    assert rows[1] == f"| log-archive ({ARCHIVE}/eu-west-2) | calm-cat (Completed) | pass | warn |"
    assert message == (f"verify-feeds: 1 of 2 accounts failing: {MEMBER}/eu-west-2: app missing, flows missing; "
                       "see artifact verify-feeds-fleet"), "warn: the uncovered account is listed, not failed"
    assert "- sandbox (444444444444)" in markdown


def test_an_uncovered_account_fails_the_run_when_so_declared() -> None:
    fleet = _fleet("fail")
    outcomes = [ChildOutcome(t, "ok", "Completed", "", {"app": ("pass", ""), "flows": ("pass", "")})
                for t in fleet.targets]
    _, message = summary("verify-feeds", fleet, outcomes)
    assert message is not None and "1 Organization account(s) not covered: sandbox (444444444444) (add them" in message
    assert summary("verify-feeds", _fleet("warn"), outcomes)[1] is None


@pytest.mark.parametrize(("accounts", "concurrency", "per_run", "size", "at_once"), [
    (50, 16, None, 8, 2),  # by default two child runs share the work, each with its half of the concurrency
    (3, 8, None, 2, 4),  # never more per run than half the accounts
    (1, 8, None, 1, 8),
    (50, 16, 25, 25, 1),  # declared: at most max_concurrent_accounts accounts at once, whole runs
    (50, 4, 10, 10, 1)])
def test_child_runs_share_their_start_between_several_accounts(accounts: int, concurrency: int, per_run: int | None,
                                                               size: int, at_once: int) -> None:
    fleet = fleet_settings([{"account_id": MEMBER}]).fleet
    assert fleet is not None
    sized = fleet.model_copy(update={"max_concurrent_accounts": concurrency, "accounts_per_run": per_run})
    assert (sized.run_size(accounts), sized.runs_at_once(sized.run_size(accounts))) == (size, at_once)


def test_api_rates_name_botocore_services_and_positive_rates() -> None:
    fleet = fleet_settings([{"account_id": MEMBER}]).fleet
    assert fleet is not None and fleet.api_calls_per_second == {}, "unset: no pool-wide limit"
    paced = Settings(**{**BASE, "fleet": {"accounts": [{"account_id": MEMBER}], "api_calls_per_second": {
        "iam": 10, "sts": 2.5}}})
    assert paced.fleet is not None and paced.fleet.api_calls_per_second == {"iam": 10, "sts": 2.5}
    with pytest.raises(ValueError, match=r"(?s)fleet\.api_calls_per_second.*\[.IAM., .sqs.\].*botocore"):
        Settings(**{**BASE, "fleet": {"accounts": [{"account_id": MEMBER}], "api_calls_per_second": {
            "IAM": 10, "sqs": 0}}})


@pytest.mark.parametrize(("rate", "lease"), [(0.5, 1), (4, 1), (10, 3), (100, 25)])
def test_a_process_leases_a_quarter_seconds_calls_at_a_time(rate: float, lease: int) -> None:
    from socfeeds.aws import lease_size

    assert lease_size(rate) == lease


def test_a_low_api_limit_spreads_an_accounts_calls_over_the_pool_and_they_all_complete(
        local_aws: LocalAws, prefect_server: None) -> None:
    """The pool's limits through real Prefect and moto. STS at one call a second: its three calls, started with six
    unlimited IAM calls, end after them all, each having waited for a slot, and all complete. IAM at 1000 a second:
    six calls in one thread cost fewer Prefect round trips than calls (slots are leased several at a time)."""
    import contextvars
    import threading

    from prefect.client.orchestration import get_client

    from socfeeds.aws import PoolRateLimits, api_limit_name

    account = "123456789012"
    with get_client(sync_client=True) as prefect:
        prefect.upsert_global_concurrency_limit_by_name(api_limit_name(account, "sts"), 1, slot_decay_per_second=1)
        prefect.upsert_global_concurrency_limit_by_name(api_limit_name(account, "iam"), 1000, 1000)
    assert local_aws.admin is not None
    session = boto3.session.Session(aws_access_key_id=local_aws.admin.access_key_id,
                                    aws_secret_access_key=local_aws.admin.secret_access_key)
    paced = AwsClients(session, "eu-west-2", local_aws.endpoint_url, account_id=account,
                       limits=PoolRateLimits({"sts": 1}))
    free = AwsClients(session, "eu-west-2", local_aws.endpoint_url)
    calls: dict[str, Callable[[], object]] = {"sts": lambda: paced.sts.get_caller_identity(),
                                              "iam": lambda: free.iam.list_users(MaxItems=1)}
    done: list[str] = []
    lock = threading.Lock()

    def repeat(service: str, times: int) -> None:
        for _ in range(times):
            calls[service]()
            with lock:
                done.append(service)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(repeat, service, times))
               for service, times in (("sts", 3), ("iam", 6))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert done.count("sts") == 3 and done.count("iam") == 6, f"every call completed: {done}"
    assert done[-2:] == ["sts", "sts"], f"the second and third STS calls waited for slots: {done}"

    leasing = PoolRateLimits({"iam": 1000})
    leased = AwsClients(session, "eu-west-2", local_aws.endpoint_url, limits=leasing, account_id=account)
    for _ in range(6):
        leased.iam.list_users(MaxItems=1)
    assert leasing.leases[api_limit_name(account, "iam")] < 6, "slots leased several at a time"


def test_a_runs_accounts_start_one_at_a_time_then_work_together(prefect_server: None) -> None:
    """OneStartAtATime against the real server (SQLite answers concurrent creates with 503s): while the first of
    four accounts' subflows is starting (its on_running hook, polled for 2 s), no other is created; yet their
    bodies run at once (all four meet at a barrier); a subflow that never reaches Running (bad parameters) does
    not hold up the next."""
    import contextvars
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from prefect import flow, runtime
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.objects import FlowRun, State

    from flows._fleet import OneStartAtATime

    together = threading.Barrier(4, timeout=60)
    first: list[str] = []
    seen_while_first_started: set[str] = set()

    def watch_the_first_start(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
        if first or flow_run.parameters["name"] not in "abcd":
            return
        first.append(flow_run.parameters["name"])
        parent = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id[0]]))
        deadline = time.monotonic() + 2
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and len(seen_while_first_started) < 2:
                seen_while_first_started.update(str(run.parameters["name"]) for run in client.read_flow_runs(
                    flow_run_filter=parent) if run.parameters.get("name") in list("abcd"))
                time.sleep(0.1)  # the poll's interval

    @flow(on_running=[watch_the_first_start])
    def account(name: str) -> str:
        together.wait()  # raises BrokenBarrierError unless all four bodies are running at once
        return name

    parent_id: list[Any] = []

    @flow
    def run_of_four() -> list[State[Any]]:
        parent_id.append(runtime.flow_run.id)
        starts = OneStartAtATime()
        refused = starts.call(account, name={"not": "a name"})
        assert refused.is_failed() and "parameters" in str(refused.message), refused
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(contextvars.copy_context().run, starts.call, account, name=name)
                       for name in "abcd"]  # this run's context: subflows of it
            return [future.result() for future in futures]

    outcome: list[list[State[Any]]] = []
    runner = threading.Thread(target=lambda: outcome.append(run_of_four()), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "an account waited for a start that never released"
    assert [state.result() for state in outcome[0]] == ["a", "b", "c", "d"]
    assert seen_while_first_started == set(first), "another account's run was created while the first started"
