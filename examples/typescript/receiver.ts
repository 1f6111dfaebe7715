// A receiver's `workflow.completed` handler typed with the `webhooks` that openapi-typescript
// generates from docs/openapi.webhooks-sample.json: verify the raw body, then use the typed event.
import { Webhook } from "standardwebhooks";
import type { webhooks } from "./herald";

type WorkflowCompleted =
  webhooks["workflow.completed"]["post"]["requestBody"]["content"]["application/json"];

export function handleWorkflowCompleted(
  secret: string,
  headers: Record<string, string>,
  body: string,
): string {
  const event = new Webhook(secret).verify(body, headers) as WorkflowCompleted;
  const run = event.data;
  const outcome = run.status === "succeeded" ? "ok" : "failed";
  const took = run.duration_ms ?? "unknown";
  return `${event.id}: workflow ${run.workflow_id} ${outcome} in ${took} ms at ${event.timestamp}`;
}
