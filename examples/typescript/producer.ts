// A producer typed with what openapi-typescript generates from docs/openapi.webhooks-sample.json
// (`herald.d.ts`): it emits `workflow.completed` with the runtime's own fetch.
import type { components, operations } from "./herald";

type EventIn = components["schemas"]["EventIn"];
type Accepted = operations["create_event"]["responses"][202]["content"]["application/json"];
type Problem = components["schemas"]["Problem"];

export async function emitWorkflowCompleted(
  baseUrl: string,
  token: string,
  tenant: string,
  workflowId: string,
): Promise<string> {
  const body: EventIn = {
    event: "workflow.completed",
    data: { workflow_id: workflowId, status: "succeeded", duration_ms: 5230 },
    idempotency_key: `workflow-${workflowId}`,
  };
  const response = await fetch(`${baseUrl}/v1/tenants/${encodeURIComponent(tenant)}/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status !== 202) {
    const problem = (await response.json()) as Problem;
    throw new Error(`Herald did not accept the event: ${problem.title} ${problem.detail ?? ""}`);
  }
  const accepted = (await response.json()) as Accepted;
  return accepted.id;
}
