"""A producer written against the Python client that openapi-python-client generates from
docs/openapi.webhooks-sample.json (package `herald_client`): it emits `workflow.completed`."""

from herald_client import AuthenticatedClient
from herald_client.api.events import create_event
from herald_client.models import EventAccepted, EventIn, EventInData


def emit_workflow_completed(base_url: str, token: str, tenant: str, workflow_id: str) -> str:
    """Emits one `workflow.completed` event and returns its id; raises unless Herald accepted it."""
    client = AuthenticatedClient(base_url=base_url, token=token)
    data = EventInData.from_dict({"workflow_id": workflow_id, "status": "succeeded", "duration_ms": 5230})
    answer = create_event.sync(
        "acme",
        client=client,
        body=EventIn(event="workflow.completed", data=data),
        idempotency_key=f"workflow-{workflow_id}",
    )
    if not isinstance(answer, EventAccepted):
        raise RuntimeError(f"Herald did not accept the event: {answer!r}")
    return answer.id
