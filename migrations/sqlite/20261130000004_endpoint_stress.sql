-- The circuit breaker (DESIGN §14): state 'closed', 'open' or 'half_open'; consecutive failures
-- since the last 2xx; when it opened; when the next probe may go (half-open: the probe's deadline);
-- failed probes since it opened (each doubles the cool-down). Attempts remember whether they were
-- the circuit's probe.
alter table endpoints add column circuit_state text not null default 'closed';
alter table endpoints add column circuit_failures integer not null default 0;
alter table endpoints add column circuit_opened_at integer;
alter table endpoints add column circuit_next_probe_at integer;
alter table endpoints add column circuit_failed_probes integer not null default 0;
alter table attempts add column probe boolean not null default false;
-- The claim looks for circuits due a probe every cycle: an index holding only the open ones keeps
-- that look free while every circuit is closed.
create index endpoints_circuit_open on endpoints (circuit_next_probe_at) where circuit_state <> 'closed';

-- Adaptive concurrency (DESIGN §14): the owner's cap becomes optional. in_flight_limit null means
-- the server's [delivery] max_in_flight_per_endpoint; an endpoint that stored the old default
-- of 10 gets null, any other stored cap is kept. The window the dispatcher adapts: its size
-- (null: [delivery] initial_in_flight), successes toward its next growth, whether it ever backed
-- off, and the latency baseline in ms.
alter table endpoints add column in_flight_limit integer;
update endpoints set in_flight_limit = max_in_flight where max_in_flight <> 10;
alter table endpoints drop column max_in_flight;
alter table endpoints add column in_flight_window integer;
alter table endpoints add column window_successes integer not null default 0;
alter table endpoints add column window_backed_off boolean not null default false;
alter table endpoints add column latency_baseline_ms integer;
