"""The local stack as a fleet of AWS accounts: an Organization, N target accounts and one no target covers.

The flows run as the tooling identity (the stack's admin, in the Organization's management account 123456789012,
itself a target) and reach every target account through the role `socfeeds-target`, which trusts that identity
when the caller passes the external id `socfeeds-local-fleet`, as a platform would deploy it with StackSets.
Each target account has what the platform gives it before socfeeds runs (a VPC, an EKS cluster, the XSIAM
Firehose token secret) and an operator user the stack uses as a person would (seeding, pasting reader keys).
moto keeps every account's state apart by the credentials a request is signed with.
"""

from __future__ import annotations

import json
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from deployments.local.processes import StackError
from deployments.local.stack import (
    ACCOUNT_ID,
    ADMIN_USER,
    PLATFORM_CLUSTER,
    Credentials,
    LocalAws,
    bootstrap_reader_key,
)
from socfeeds.arns import CLOUDTRAIL_SERVICE

if TYPE_CHECKING:
    from deployments.local.stack import LocalXsiam
    from socfeeds.settings import Settings
    from socfeeds.targets import Target

FLEET_ROLE = "socfeeds-target"
FLEET_EXTERNAL_ID = "socfeeds-local-fleet"
TOOLING_NAME = "tooling"
UNCOVERED_NAME = "sandbox"  # in the Organization, no target: what "not covered" reports
OPERATOR_USER = "socfeeds-operator"
RolePolicy = Literal["admin", "provision"]
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass
class FleetAccount:
    """One target account: who operates it locally, and the platform the settings point at."""

    account_id: str
    name: str
    operator: Credentials
    cidr_octet: int
    cluster: str
    vpc_id: str = ""
    subnet_ids: list[str] = field(default_factory=list)

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{FLEET_ROLE}"


def member_name(index: int) -> str:
    """workload-a, workload-b, ... for the member accounts after the tooling account."""
    letters = string.ascii_lowercase
    return f"workload-{letters[index]}" if index < len(letters) else f"workload-{index + 1}"


class LocalFleet:
    """The Organization and its accounts in one moto server; `bootstrap` runs before IAM authentication is on."""

    def __init__(self, aws: LocalAws, size: int, role_policy: RolePolicy = "admin") -> None:
        """role_policy: the target roles' permissions, see put_role_policies."""
        if size < 1:
            raise StackError(f"a fleet has at least one account (the tooling account), not {size}")
        self.aws, self.size, self.role_policy = aws, size, role_policy
        self.role_policies: dict[str, RolePolicy] = {}  # account id -> what its target role holds now
        self.accounts: list[FleetAccount] = []
        self.uncovered: FleetAccount | None = None  # an operator, no target role, no platform
        self.organization_id = ""

    @property
    def uncovered_account_id(self) -> str:
        return self.uncovered.account_id if self.uncovered else ""

    @property
    def account_ids(self) -> list[str]:
        return [a.account_id for a in self.accounts]

    def account(self, key: str) -> FleetAccount:
        """An account by id or name."""
        everyone = [*self.accounts, *([self.uncovered] if self.uncovered else [])]
        found = next((a for a in everyone if key in {a.account_id, a.name}), None)
        if found is None:
            raise KeyError(f"no fleet account {key!r}; the fleet has {[a.name for a in self.accounts]}")
        return found

    def bootstrap(self) -> None:
        """With authentication still off, any credentials act where the role ARN they were assumed for points:
        create the Organization, its accounts, an operator and the target role in each."""
        assert self.aws.admin is not None
        organizations = self.aws.client("organizations")
        self.organization_id = organizations.create_organization(FeatureSet="ALL")["Organization"]["Id"]
        organizations.enable_aws_service_access(ServicePrincipal=CLOUDTRAIL_SERVICE)  # for its organization trail
        self.accounts = [FleetAccount(ACCOUNT_ID, TOOLING_NAME, self.aws.admin, 20, PLATFORM_CLUSTER)]
        for index in range(self.size - 1):
            name = member_name(index)
            member = self._create_account(organizations, name)
            self.accounts.append(FleetAccount(member, name, self._operator(member), 21 + index, f"{name}-live"))
        uncovered = self._create_account(organizations, UNCOVERED_NAME)
        self.uncovered = FleetAccount(uncovered, UNCOVERED_NAME, self._operator(uncovered), 0, "")
        tooling_identity = self.aws.client("iam").get_user(UserName=ADMIN_USER)["User"]["Arn"]
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": tooling_identity}, "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": FLEET_EXTERNAL_ID}}}]}
        for account in self.accounts:
            iam = self.aws.client("iam", account.operator)
            iam.create_role(RoleName=FLEET_ROLE, Path="/", AssumeRolePolicyDocument=json.dumps(trust),
                            Description="socfeeds: what the flows in the tooling account do in this account")
            iam.put_role_policy(RoleName=FLEET_ROLE, PolicyName=FLEET_ROLE, PolicyDocument=json.dumps(ALLOW_ALL))
            self.role_policies[account.account_id] = "admin"

    def _create_account(self, organizations: Any, name: str) -> str:
        status = organizations.create_account(Email=f"{name}@socfeeds.invalid", AccountName=name)
        return str(status["CreateAccountStatus"]["AccountId"])

    def _operator(self, account_id: str) -> Credentials:
        """The account's platform operator (an admin user), made through a session in that account."""
        assert self.aws.admin is not None
        session = self.aws.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole",
            RoleSessionName="socfeeds-local-bootstrap")["Credentials"]
        iam = self.aws.client("iam", Credentials(session["AccessKeyId"], session["SecretAccessKey"],
                                                 session["SessionToken"]))
        iam.create_user(UserName=OPERATOR_USER, Path="/socfeeds/")
        iam.put_user_policy(UserName=OPERATOR_USER, PolicyName="admin", PolicyDocument=json.dumps(ALLOW_ALL))
        key = iam.create_access_key(UserName=OPERATOR_USER)["AccessKey"]
        return Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    def seed(self) -> None:
        """Each member account's platform, as the tooling account's (LocalAws._seed_platform): VPC, EKS cluster."""
        tooling = self.accounts[0]
        tooling.vpc_id, tooling.subnet_ids = self.aws.vpc_id, list(self.aws.subnet_ids)
        members = self.accounts[1:]
        if members:
            with ThreadPoolExecutor(max_workers=len(members)) as pool:
                list(pool.map(self._seed_platform, members))

    def _seed_platform(self, account: FleetAccount) -> None:
        ec2 = self.aws.client("ec2", account.operator)
        octet = account.cidr_octet
        vpc = ec2.create_vpc(CidrBlock=f"172.{octet}.0.0/16", TagSpecifications=[{
            "ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": f"cloud-platform-{account.name}"}]}])
        account.vpc_id = str(vpc["Vpc"]["VpcId"])
        account.subnet_ids = [ec2.create_subnet(VpcId=account.vpc_id, CidrBlock=f"172.{octet}.{n}.0/24")["Subnet"][
            "SubnetId"] for n in (1, 2)]
        self.aws.client("eks", account.operator).create_cluster(
            name=account.cluster, roleArn=f"arn:aws:iam::{account.account_id}:role/{account.cluster}-eks-cluster",
            resourcesVpcConfig={"subnetIds": account.subnet_ids})

    def settings(self, values: dict[str, Any], state_dir: Path) -> dict[str, Any]:
        """The single-account values plus the `fleet` section: the shared catalog stays at the top level (each
        bucket name made unique per account, as S3 requires), each account's platform in its overrides."""
        from socfeeds.targets import declared_targets, target_settings

        fleet_values = json.loads(json.dumps(values))
        for feed in fleet_values["s3_feeds"].values():
            feed["bucket"] = per_account(feed["bucket"])
            feed["additional_buckets"] = [per_account(b) for b in feed.get("additional_buckets", [])]
        accounts = [{"account_id": a.account_id, "name": a.name, "overrides": self._overrides(a, values, state_dir)}
                    for a in self.accounts]
        archive_shape(accounts, fleet_values["s3_feeds"], self.organization_id)
        fleet_values["fleet"] = {
            "role_name": FLEET_ROLE, "external_id": FLEET_EXTERNAL_ID,
            "organization": {"enabled": True, "uncovered": "warn"},  # listed in the matrix; the demo stays green
            "accounts": accounts}
        settings = _settings(fleet_values)
        rendered = {t.account_id: target_settings(settings, t) for t in declared_targets(settings)}
        _check_unique_buckets(rendered)
        if self.role_policy != "admin":
            self.put_role_policies(fleet_values, self.role_policy)
        return dict(fleet_values)

    def _overrides(self, account: FleetAccount, values: dict[str, Any], state_dir: Path) -> dict[str, Any]:
        """What differs per account: its VPC and cluster, and local files a concurrent run must not share."""
        overrides: dict[str, Any] = {"vpc_id": account.vpc_id, "eks_cluster_name": account.cluster}
        outputs = {name: {"source": {"output_path": str(state_dir / f"fluent-bit-output-s3-{account.name}.conf")}}
                   for name, feed in values["s3_feeds"].items() if "output_path" in feed.get("source", {})}
        if outputs:
            overrides["s3_feeds"] = outputs
        return overrides

    def put_role_policies(self, values: dict[str, Any], kind: RolePolicy, accounts: list[str] | None = None) -> None:
        """The target role's permissions in each account (or the accounts named): "admin", Allow * (the default),
        or "provision", socfeeds.target_role.provision_policy rendered from that account's settings.

        Not "provision" by default: on moto 5.2.5 it refuses calls AWS allows (moto authorises iam:GetUser against
        "*", asks s3:HeadBucket for HeadBucket, refuses sqs:GetQueueUrl on a queue not made yet; socfeeds/target_role
        lists these), so provision-feeds fails in every account with it; it is for tests of the policy itself."""
        rendered = dict(self._targets_by_account(values))
        for account in self.accounts:
            if accounts is not None and account.account_id not in accounts and account.name not in accounts:
                continue
            if kind == "provision":
                from socfeeds.target_role import provision_policy

                document: Any = provision_policy(rendered[account.account_id])
            else:
                document = ALLOW_ALL
            self.aws.client("iam", account.operator).put_role_policy(
                RoleName=FLEET_ROLE, PolicyName=FLEET_ROLE, PolicyDocument=json.dumps(document))
            self.role_policies[account.account_id] = kind

    def collect(self, xsiam: LocalXsiam, values: dict[str, Any]) -> None:
        """XSIAM reads every account's S3 feeds: one data source per account, with that account's reader key,
        which the stand-in takes from the account's secret as that account's operator."""
        accounts, operators = [], {}
        for target, rendered in self._targets(values):
            operator_env = f"XSIAM_OPERATOR_{target.account_id}"
            operators[operator_env] = self.account(target.account_id).operator
            accounts.append({
                "account_id": target.account_id, "operator_key_env": operator_env,
                "reader": {"secret_id": rendered.reader.secret_name},
                "feeds": [{"name": f"{target.name}/{name}", "log_type": feed.log_type,
                           "queue_url": self.aws.queue_url(feed.queue, target.account_id)}
                          for name, feed in rendered.s3_feeds.items()]})
        xsiam.collect([], accounts=accounts, operators=operators)

    def put_token_secrets(self, name: str, token: str) -> None:
        """Every account's Firehose streams authenticate to the one tenant with its token, kept in each account."""
        for account in self.accounts:
            self.aws.put_token_secret(name, token, account.operator)

    def bootstrap_reader_keys(self, values: dict[str, Any]) -> None:
        """After provisioning: each account's reader key made by hand and kept where the rotation flow keeps it."""
        for target, rendered in self._targets(values):
            bootstrap_reader_key(self.aws, rendered.reader.model_dump(mode="json"),
                                 self.account(target.account_id).operator)

    def _targets_by_account(self, values: dict[str, Any]) -> dict[str, Settings]:
        return {target.account_id: settings for target, settings in self._targets(values)}

    def _targets(self, values: dict[str, Any]) -> list[tuple[Target, Settings]]:
        """One (target, its rendered settings) per account (the stack has one region)."""
        from socfeeds.targets import declared_targets, target_settings

        settings = _settings(values)
        seen: dict[str, tuple[Target, Settings]] = {}
        for target in declared_targets(settings):
            seen.setdefault(target.account_id, (target, target_settings(settings, target)))
        return list(seen.values())

    def assume(self, account: str, external_id: str | None = FLEET_EXTERNAL_ID,
               credentials: Credentials | None = None) -> Credentials:
        """What the flows do to reach an account (by id or name): assume its target role as the tooling identity."""
        extra = {"ExternalId": external_id} if external_id is not None else {}
        session = self.aws.client("sts", credentials).assume_role(
            RoleArn=self.account(account).role_arn, RoleSessionName="socfeeds-local", **extra)["Credentials"]
        return Credentials(session["AccessKeyId"], session["SecretAccessKey"], session["SessionToken"])

    def client(self, account: str, service: str) -> Any:
        """A client acting in the account (by id or name) as its operator."""
        return self.aws.client(service, self.account(account).operator)


ARCHIVED_FEED = "vpc-flow-logs"
ORGANIZATION_TRAIL_FEED = "cloudtrail"


def archive_shape(accounts: list[dict[str, Any]], catalog: dict[str, Any], organization_id: str) -> None:
    """The platform's central log archive (the second account), beside per-account feeds. Flow logs: the archive's
    bucket receives its own and every later account's (source_accounts); those accounts wire only their flow log
    to it (bucket_account), while the tooling account keeps its own bucket. CloudTrail: the tooling account, the
    Organization's management account, makes the organization trail into the archive's bucket, which logs the
    archive too; the later accounts keep their own account trail (a business unit not yet moved: its events
    arrive twice until it drops its feed). Needs three accounts or more."""
    if len(accounts) < 3:
        return
    tooling, archive, members = accounts[0], accounts[1], accounts[2:]

    def archive_bucket(feed: str) -> str:
        return str(catalog[feed]["bucket"]).replace("{account_id}", archive["account_id"])

    def override(account: dict[str, Any], feed: str, values: dict[str, Any]) -> None:
        account["overrides"].setdefault("s3_feeds", {}).setdefault(feed, {}).update(values)

    if ARCHIVED_FEED in catalog:
        override(archive, ARCHIVED_FEED, {"source_accounts": [m["account_id"] for m in members]})
        for member in members:
            override(member, ARCHIVED_FEED, {"bucket": archive_bucket(ARCHIVED_FEED),
                                             "bucket_account": archive["account_id"]})
    if ORGANIZATION_TRAIL_FEED in catalog:
        source = {"organization_id": organization_id}  # merged into the catalog's source
        override(archive, ORGANIZATION_TRAIL_FEED, {"source_accounts": [tooling["account_id"]], "source": source})
        override(tooling, ORGANIZATION_TRAIL_FEED, {"bucket": archive_bucket(ORGANIZATION_TRAIL_FEED),
                                                    "bucket_account": archive["account_id"], "source": source})


def per_account(bucket: str) -> str:
    """S3 bucket names are global: a catalog name without {account_id} gets it, so each account has its own."""
    return bucket if "{account_id}" in bucket else f"{bucket}-{{account_id}}"


def _settings(values: dict[str, Any]) -> Settings:
    from socfeeds.settings import Settings

    return Settings(**values)


def _check_unique_buckets(rendered: dict[str, Settings]) -> None:
    """Two accounts may not name the same bucket (S3 refuses the second): say which, before any run."""
    owners: dict[str, str] = {}
    for account_id, settings in rendered.items():
        names = [b for feed in settings.s3_feeds.values() for b in feed.buckets]
        names += [feed.error_bucket for feed in settings.firehose_feeds.values()]
        for bucket in names:
            if owners.setdefault(bucket, account_id) != account_id:
                raise StackError(f"bucket {bucket!r} is named by accounts {owners[bucket]} and {account_id}: "
                                 "put {account_id} in its name")
