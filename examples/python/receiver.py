"""A receiver's `workflow.completed` handler typed with the models openapi-python-client generates
from the `webhooks` of docs/openapi.webhooks-sample.json: verify the raw body, then parse it."""

import json
from collections.abc import Mapping

from herald_client.models import WorkflowCompletedDataStatus, WorkflowCompletedEvent
from standardwebhooks.webhooks import Webhook


def handle_workflow_completed(secret: str, headers: Mapping[str, str], body: bytes) -> str:
    """Verifies one delivery and returns a line about the run it reports."""
    Webhook(secret).verify(body, dict(headers))  # raises WebhookVerificationError
    event = WorkflowCompletedEvent.from_dict(json.loads(body))
    run = event.data
    outcome = "ok" if run.status == WorkflowCompletedDataStatus.SUCCEEDED else "failed"
    took = run.duration_ms if isinstance(run.duration_ms, int) else None
    return f"{event.id}: workflow {run.workflow_id} {outcome} in {took} ms at {event.timestamp.isoformat()}"
