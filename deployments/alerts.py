"""The on-call alerts, as data: Prefect automations that post to the channel's incoming webhook.

Applied by `python -m deployments.deploy` (after `prefect deploy --all`), idempotently: each
automation is found by name and updated in place, or created; one no longer listed is deleted.
One message per incident: a failed run sends one message (its state message names every failed feed or
check, with the fix), and the deployment's next completed run sends one "recovered" message.
The webhook URL comes from settings (`alerts.webhook_url`, a secret) and is kept only in a Custom Webhook
notification block's secrets.

The dead-man's switches are proactive automations: they fire on silence, when a flow that should report per feed
and account has not (worker down, schedule paused, or the flow failing before it emits). See `dead_mans_switches`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from prefect.automations import AutomationCore
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.events import emit_event
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import Automation, EventTrigger, Posture
from prefect.events.worker import EventsWorker
from prefect.exceptions import ObjectNotFound
from prefect.types import SecretDict
from prefect.utilities.urls import url_for

from socfeeds.settings import AlertSettings, Settings, is_loopback
from socfeeds.targets import declared_targets, target_settings

DEPLOYMENT_TAG = "socfeeds"  # every deployment in prefect.yaml carries it (the `common` anchor)
RUN_LINK = "{{ flow_run|ui_url }}"
ALERT_PREFIX = "socfeeds: "  # every alert's name starts so; others on the server are not ours to touch


@dataclass(frozen=True)
class Alert:
    """One automation: the events that fire it and the message the on-call engineer reads."""

    name: str
    description: str
    expect: frozenset[str]
    match: dict[str, str]
    subject: str
    body: str
    match_related: dict[str, str] | None = None
    after: frozenset[str] = frozenset()
    for_each: frozenset[str] = frozenset()
    silent_for: timedelta | None = None  # set: proactive, fires when no `expect` event came within this


ALERTS = [
    Alert(
        name="socfeeds: run failed or crashed",
        description="Any Failed or Crashed run of a socfeeds deployment.",
        expect=frozenset({"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}),
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{DEPLOYMENT_TAG}"},
        subject="socfeeds: {{ flow.name }}/{{ deployment.name }} {{ flow_run.state.name }}",
        body=(
            "Run {{ flow_run.name }} of {{ flow.name }}/{{ deployment.name }} ended {{ flow_run.state.name }}.\n"
            "{{ flow_run.state.message or '' }}\n"
            f"Run: {RUN_LINK}\n"
            "{% if flow_run.state.name == 'Crashed' %}The flow process died: read the worker's log on its host."
            "{% else %}The artifact the message names lists every failure, where it is and its fix."
            "{% endif %} "
            "Once fixed: prefect deployment run '{{ flow.name }}/{{ deployment.name }}' --watch"
        ),
    ),
    Alert(
        name="socfeeds: run recovered",
        description="A deployment whose last run failed or crashed completed again: the incident is over.",
        expect=frozenset({"socfeeds.run.recovered"}),
        match={"prefect.resource.id": "socfeeds.deployment.*"},
        subject="socfeeds: {{ event.resource.name }} recovered",
        body=(
            "Run {{ flow_run.name }} of {{ event.resource.name }} completed. The previous run, "
            "{{ event.payload.previous_run }}, ended {{ event.payload.previous_state }}: "
            "{{ event.payload.previous_message }}\nNo action needed. Run: " + RUN_LINK
        ),
    ),
    Alert(
        name="socfeeds: rotation awaits approval",
        description="A reader key rotation paused for the SOC's approval.",
        expect=frozenset({"socfeeds.rotation.awaiting-approval"}),
        match={"prefect.resource.id": "socfeeds.reader.*"},
        subject="socfeeds: reader key rotation for {{ event.resource.name }} waits for approval",
        body=(
            "New key {{ event.payload.key }} is in Secrets Manager secret {{ event.payload.secret }} "
            "(stage AWSPENDING); approval {{ event.payload.approval }} of {{ event.payload.required }}, "
            "from: {{ event.payload.approvers }}.\n"
            "SOC: put it in every XSIAM Amazon S3 data source, then approve in the form: "
            f"{RUN_LINK}\n"
            "or: prefect api POST /flow_runs/{{ flow_run.id }}/resume --data "
            "'{\"run_input\": {\"approved\": true, \"approver\": \"<your name>\", \"reason\": \"<ticket>\"}}'\n"
            "(python -m deployments.approve prints this command ready to paste.) "
            "Unanswered, the rotation rolls back after {{ event.payload.timeout_seconds }} s; the old key stays active."
        ),
    ),
    Alert(
        name="socfeeds: rotation answer refused",
        description="An answer to a rotation's approval was refused; the run waits for another.",
        expect=frozenset({"socfeeds.rotation.answer-refused"}),
        match={"prefect.resource.id": "socfeeds.reader.*"},
        subject="socfeeds: an approval of the key rotation for {{ event.resource.name }} was refused",
        body=(
            "The approval from {{ event.payload.approver }} for new key {{ event.payload.key }} was refused: "
            "{{ event.payload.why }}.\n"
            "The run is paused again for approval {{ event.payload.approval }} of {{ event.payload.required }}: "
            "another of {{ event.payload.approvers }} must answer, in the form: "
            f"{RUN_LINK}\n"
            "or: prefect api POST /flow_runs/{{ flow_run.id }}/resume --data "
            "'{\"run_input\": {\"approved\": true, \"approver\": \"<your name>\", \"reason\": \"<ticket>\"}}'"
        ),
    ),
    Alert(
        name="socfeeds: rotation rejected",
        description="A reader key rotation was rejected and rolled back (the run ends Cancelled, not Failed).",
        expect=frozenset({"socfeeds.rotation.rejected"}),
        match={"prefect.resource.id": "socfeeds.reader.*"},
        subject="socfeeds: reader key rotation for {{ event.resource.name }} rejected by {{ event.payload.approver }}",
        body=(
            "{{ event.payload.approver }} rejected the rotation: {{ event.payload.reason }}.\n"
            "Rolled back: new key {{ event.payload.key }} deleted, old key {{ event.payload.current }} still active. "
            "If an XSIAM data source already holds {{ event.payload.key }}, put the AWSCURRENT key back now.\n"
            f"Run: {RUN_LINK}\n"
            "To rotate later: prefect deployment run 'rotate-reader-keys/on-demand'"
        ),
    ),
]


def save_webhook_block(alerts: AlertSettings) -> UUID:
    """The notification block; the URL sits in its secrets, so the UI and API show it masked."""
    assert alerts.webhook_url is not None
    url = alerts.webhook_url.get_secret_value()
    block = CustomWebhookNotificationBlock(
        name="socfeeds on-call", url="{{webhook_url}}", json_data={"text": "*{{subject}}*\n{{body}}"},
        secrets=SecretDict({"webhook_url": url}),
        allow_private_urls=is_loopback(url))  # production hooks are public: refuse a redirect inward
    return UUID(str(block.save(alerts.block_name, overwrite=True)))


def automation(alert: Alert, block_id: UUID) -> AutomationCore:
    posture = Posture.Reactive if alert.silent_for is None else Posture.Proactive
    return AutomationCore(
        name=alert.name, description=alert.description, enabled=True,
        trigger=EventTrigger(expect=set(alert.expect), after=set(alert.after), for_each=set(alert.for_each),
                             match=alert.match, match_related=alert.match_related or {}, posture=posture, threshold=1,
                             within=alert.silent_for or timedelta(0)),
        actions=[SendNotification(block_document_id=block_id, subject=alert.subject, body=alert.body)])


# --- the dead-man's switch --------------------------------------------------------------------------------------------

ARMED_EVENT = "socfeeds.deadman.armed"  # the deploy command's: starts each feed x account's first window
ACCOUNT_LABEL = "socfeeds.account"  # on the resource of every per-feed event the flows emit
WHEN = "event.occurred.strftime('%Y-%m-%d %H:%M:%S UTC')"  # the last event heard (events' times are UTC)


@dataclass(frozen=True)
class Watched:
    """A flow that must report per feed and account at least once a window, and how its switch reads."""

    noun: str  # "canary": "no canary has passed for ..."
    verb: str
    event: str  # emitted per feed, resource socfeeds.feed.<feed> with the account label, when a run gets that far
    deployment: str  # "<flow>/<deployment>": the scheduled one, linked from the alert
    window: Callable[[Settings], timedelta]


WATCHED = (
    Watched("canary", "passed", "socfeeds.canary.passed", "feed-canary/daily", lambda s: s.canary.expected_every),
    Watched("audit", "completed", "socfeeds.audit.completed", "audit-feeds/daily", lambda s: s.audit.expected_every),
)


def watched_feeds(settings: Settings) -> dict[str, dict[str, Settings]]:
    """Feed -> {account id: that account's settings}, for every declared account's own feeds.

    A feed delivering into another account's bucket is left out: that account's canary and audit cover the bucket,
    and the delivering account's runs emit nothing for it.
    """
    watched: dict[str, dict[str, Settings]] = {}
    for target in declared_targets(settings):
        rendered = target_settings(settings, target)
        for feed in [*rendered.s3_feeds, *rendered.firehose_feeds]:
            watched.setdefault(feed, {}).setdefault(target.account_id, rendered)
    return watched


def span(window: timedelta) -> str:
    """A window as on-call reads it: 26 h, 90 min, 15 s."""
    seconds = int(window.total_seconds())
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def dead_mans_switch(watched: Watched, feed: str, window: timedelta, link: str) -> Alert:
    """One proactive automation per feed, one window (bucket) per account: each `watched.event` of the account
    restarts its window (it is both `after` and `expect`), and a window that closes empty fires once. The deploy
    command's ARMED_EVENT opens the first window, so a feed that never reports alerts too; a closed window is
    not reopened until the flow reports again (or the next deploy), so one silence is one message."""
    said = f"no {watched.noun} has {watched.verb} for {feed}"
    return Alert(
        name=f"socfeeds: no {watched.noun} {watched.verb}: {feed}",
        description=f"Dead-man's switch: fires when an account's {feed} has no {watched.event} within "
                    f"{span(window)}.",
        expect=frozenset({watched.event}), after=frozenset({watched.event, ARMED_EVENT}),
        for_each=frozenset({ACCOUNT_LABEL}), match={"prefect.resource.id": f"socfeeds.feed.{feed}"},
        silent_for=window,
        subject=f"socfeeds: {said} in {span(window)}",
        body=(
            f"{{% set account = event.resource['{ACCOUNT_LABEL}'] %}}"
            f"{said[0].upper()}{said[1:]} of account {{{{ account }}}} in {span(window)}: "
            f"worker down, schedule paused, or the {watched.noun} failing before it emits.\n"
            f"{{% if event.event == '{ARMED_EVENT}' %}}Nothing since this switch was armed by a deploy at "
            f"{{{{ {WHEN} }}}}.{{% else %}}Last {watched.verb} at {{{{ {WHEN} }}}}.{{% endif %}}\n"
            f"Deployment (schedule, work pool, last runs): {link}\n"
            f"Once the worker runs and the schedule is active: prefect deployment run '{watched.deployment}' "
            f"--param feeds='[\"{feed}\"]' --param accounts='[\"{{{{ account }}}}\"]' --watch"
        ),
    )


def dead_mans_switches(settings: Settings, client: SyncPrefectClient) -> tuple[list[Alert], list[str]]:
    """The switches for every watched flow that is deployed, and a line per watched flow that is not (a switch
    for a flow nobody scheduled would only cry wolf)."""
    feeds = watched_feeds(settings)
    switches, notes = [], []
    for watched in WATCHED:
        try:
            deployment = client.read_deployment_by_name(watched.deployment)
        except ObjectNotFound:
            notes.append(f"alerts: {watched.deployment} is not deployed, so its dead-man's switch is not applied")
            continue
        link = str(url_for("deployment", obj_id=deployment.id))
        switches += [dead_mans_switch(watched, feed, max(watched.window(s) for s in accounts.values()), link)
                     for feed, accounts in feeds.items()]
    return switches, notes


def arm(settings: Settings) -> str:
    """Open every feed x account's first window: without it, a pair that never reports would never alert."""
    pairs = [(feed, account) for feed, accounts in watched_feeds(settings).items() for account in accounts]
    for feed, account in pairs:
        emit_event(event=ARMED_EVENT, resource={"prefect.resource.id": f"socfeeds.feed.{feed}",
                                                "prefect.resource.name": feed, ACCOUNT_LABEL: account},
                   payload={"by": "python -m deployments.deploy"})
    EventsWorker.drain_all(timeout=30)
    return f"alerts: dead-man's switches armed for {len(pairs)} feed x account pairs"


def apply_alerts(settings: Settings) -> list[str]:
    """Create, update or keep every automation, then arm the dead-man's switches; returns what was done, a line each.

    An automation already as wanted is left alone: an update gives its trigger a new id on the server, which drops
    the open windows of a dead-man's switch (a silence would then be noticed a whole window late).
    """
    alerts = settings.alerts
    if alerts.webhook_url is None:
        return ["alerts: alerts.webhook_url is not set, so no automations were applied "
                "(set SOCFEEDS_ALERTS__WEBHOOK_URL or alerts.webhook_url in the settings file)"]
    block_id = save_webhook_block(alerts)
    done = [f"alerts: notification block {alerts.block_name!r} saved"]
    with get_client(sync_client=True) as client:
        switches, notes = dead_mans_switches(settings, client)
        done += notes
        wanted_alerts = [*ALERTS, *switches]
        for retired in client.read_automations():  # an alert dropped from ALERTS must stop firing too
            if retired.name.startswith(ALERT_PREFIX) and retired.name not in {alert.name for alert in wanted_alerts}:
                client.delete_automation(retired.id)
                done.append(f"alerts: deleted retired {retired.name!r}")
        for alert in wanted_alerts:
            wanted = automation(alert, block_id)
            existing = client.read_automations_by_name(alert.name)
            for duplicate in existing[1:]:  # a name is one alert: never two messages per event
                client.delete_automation(duplicate.id)
            if not existing:
                client.create_automation(wanted)
                done.append(f"alerts: created {alert.name!r}")
            elif as_core(existing[0]) != wanted:
                client.update_automation(existing[0].id, wanted)
                done.append(f"alerts: updated {alert.name!r}")
            else:
                done.append(f"alerts: unchanged {alert.name!r}")
    if switches:
        done.append(arm(settings))
    return done


def as_core(existing: Automation) -> AutomationCore:
    """What the server holds, comparable with what `automation` builds."""
    return AutomationCore.model_validate(existing.model_dump(include=set(AutomationCore.model_fields)))
