-- Claims read an endpoint's due deliveries in (next_attempt_at, id) order with a limit. With the
-- id in the index that read is an index scan that stops at the limit, whatever the backlog, and
-- needs no sort.
drop index deliveries_endpoint_due;
create index deliveries_endpoint_due on deliveries (endpoint_id, next_attempt_at, id) where status = 'pending';
