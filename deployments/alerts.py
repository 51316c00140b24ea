"""The on-call alerts, as data: Prefect automations that post to the channel's incoming webhook.

Applied by `python -m deployments.deploy` (after `prefect deploy --all`), idempotently: each
automation is found by name and updated in place, or created; one no longer listed is deleted.
One message per incident: a failed run sends one message (its state message names every failed feed or
check, with the fix), and the deployment's next completed run sends one "recovered" message.
The webhook URL comes from settings (`alerts.webhook_url`, a secret) and is kept only in a Custom Webhook
notification block's secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from prefect.automations import AutomationCore
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.types import SecretDict

from socfeeds.settings import AlertSettings, is_loopback

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
    return AutomationCore(
        name=alert.name, description=alert.description, enabled=True,
        trigger=EventTrigger(expect=set(alert.expect), match=alert.match, match_related=alert.match_related or {},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_id, subject=alert.subject, body=alert.body)])


def apply_alerts(alerts: AlertSettings) -> list[str]:
    """Create or update every automation; returns what was done, a line each."""
    if alerts.webhook_url is None:
        return ["alerts: alerts.webhook_url is not set, so no automations were applied "
                "(set SOCFEEDS_ALERTS__WEBHOOK_URL or alerts.webhook_url in the settings file)"]
    block_id = save_webhook_block(alerts)
    done = [f"alerts: notification block {alerts.block_name!r} saved"]
    with get_client(sync_client=True) as client:
        for retired in client.read_automations():  # an alert dropped from ALERTS must stop firing too
            if retired.name.startswith(ALERT_PREFIX) and retired.name not in {alert.name for alert in ALERTS}:
                client.delete_automation(retired.id)
                done.append(f"alerts: deleted retired {retired.name!r}")
        for alert in ALERTS:
            wanted = automation(alert, block_id)
            existing = client.read_automations_by_name(alert.name)
            if existing:
                client.update_automation(existing[0].id, wanted)
                for duplicate in existing[1:]:  # a name is one alert: never two messages per event
                    client.delete_automation(duplicate.id)
                done.append(f"alerts: updated {alert.name!r}")
            else:
                client.create_automation(wanted)
                done.append(f"alerts: created {alert.name!r}")
    return done
