-- Batched delivery (DESIGN §14): an endpoint's batching as JSON {max_events, max_wait_ms,
-- max_bytes}, null for one event per request. Each attempt of a batch request carries the
-- request's bat_ id; a leased delivery carries its batch's id, so that a batch in flight counts
-- as one slot of its endpoint's window.
alter table endpoints add column batch text;
alter table attempts add column batch_id text;
alter table deliveries add column lease_batch text;
