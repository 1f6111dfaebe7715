-- An endpoint's own delivery policy (timeout, retry schedule, retry_client_errors) as JSON with
-- milliseconds; NULL = every member inherits the server's [delivery] values.
alter table endpoints add column delivery_policy text;
-- The timeout that applied to each attempt, in milliseconds.
alter table attempts add column timeout_ms bigint;
