-- Herald schema, PostgreSQL. Times are Unix microseconds; JSON is TEXT; ids are prefixed TEXT.

create table tenants (
    id text primary key not null,
    external_id text,
    name text not null,
    metadata text not null default '{}',
    created_at bigint not null,
    updated_at bigint not null,
    deleted_at bigint
);
create unique index tenants_external_id on tenants (external_id)
    where external_id is not null and deleted_at is null;

create table tokens (
    id text primary key not null,
    name text not null,
    tenant_id text references tenants (id),
    token_hash text not null unique,
    prefix text not null,
    created_at bigint not null,
    last_used_at bigint,
    revoked_at bigint
);
create index tokens_tenant on tokens (tenant_id, id);

create table event_types (
    name text primary key not null,
    description text not null default '',
    schema text,
    archived boolean not null default false,
    created_at bigint not null,
    updated_at bigint not null
);

create table endpoints (
    id text primary key not null,
    tenant_id text not null references tenants (id),
    url text not null,
    description text not null default '',
    event_types text not null default '[]',
    headers text not null default '{}',
    enabled boolean not null default true,
    disabled_reason text,
    disabled_at bigint,
    fifo boolean not null default false,
    max_in_flight integer not null default 10,
    rate_limit_per_second integer,
    -- signing secrets (encrypted at rest when a master key is configured)
    secret text not null,
    previous_secret text,
    previous_secret_expires_at bigint,
    -- dispatcher state shared by every replica (attempts in flight are counted from deliveries' leases)
    paused_until bigint,
    next_fifo_seq bigint not null default 0,
    rate_next_at bigint,
    -- health
    last_success_at bigint,
    failing_since bigint,
    last_error text,
    last_error_at bigint,
    -- delivery.exhausted operational events: at most 10 a minute per endpoint
    exhausted_window_start bigint,
    exhausted_sent integer not null default 0,
    exhausted_suppressed integer not null default 0,
    created_at bigint not null,
    updated_at bigint not null,
    deleted_at bigint
);
create index endpoints_tenant on endpoints (tenant_id, id) where deleted_at is null;

create table events (
    id text primary key not null,
    tenant_id text not null references tenants (id),
    event_type text not null,
    -- the signed envelope, exactly as sent; null once purged
    payload text,
    idempotency_key text,
    deliveries integer not null default 0,
    created_at bigint not null
);
create index events_tenant on events (tenant_id, id);
create index events_tenant_type on events (tenant_id, event_type, id);
create index events_created on events (created_at);

create table deliveries (
    id text primary key not null,
    event_id text not null references events (id) on delete cascade,
    tenant_id text not null,
    endpoint_id text not null references endpoints (id),
    status text not null check (status in ('pending', 'delivered', 'failed')),
    attempt_count integer not null default 0,
    run_attempts integer not null default 0,
    -- attempts allowed in the current run; null = 1 + the configured retries
    max_attempts integer,
    -- test deliveries skip the endpoint's enabled flag, FIFO lane and pause
    bypass boolean not null default false,
    next_attempt_at bigint not null,
    fifo_seq bigint,
    lease_until bigint,
    lease_token text,
    last_error text,
    created_at bigint not null,
    completed_at bigint
);
create index deliveries_due on deliveries (next_attempt_at) where status = 'pending';
create index deliveries_endpoint_due on deliveries (endpoint_id, next_attempt_at) where status = 'pending';
create index deliveries_fifo on deliveries (endpoint_id, fifo_seq)
    where status = 'pending' and fifo_seq is not null;
create index deliveries_leased on deliveries (lease_until) where lease_until is not null;
create index deliveries_endpoint_leased on deliveries (endpoint_id, lease_until) where lease_until is not null;
create index deliveries_bypass on deliveries (next_attempt_at) where bypass and status = 'pending';
create index deliveries_tenant on deliveries (tenant_id, id);
create index deliveries_tenant_status on deliveries (tenant_id, status, id);
create index deliveries_event on deliveries (event_id);
create index deliveries_endpoint on deliveries (endpoint_id, id);
create index deliveries_endpoint_failed on deliveries (endpoint_id, created_at) where status = 'failed';
create index deliveries_created on deliveries (created_at);

create table attempts (
    id text primary key not null,
    delivery_id text not null references deliveries (id) on delete cascade,
    endpoint_id text not null,
    number integer not null,
    started_at bigint not null,
    finished_at bigint,
    duration_ms bigint,
    status_code integer,
    error_kind text,
    error text,
    response_body text
);
create unique index attempts_delivery_number on attempts (delivery_id, number);
create index attempts_endpoint_started on attempts (endpoint_id, started_at);
create index attempts_started on attempts (started_at);
create index attempts_open on attempts (delivery_id) where finished_at is null;

create table idempotency_keys (
    scope text not null,
    key text not null,
    request_hash text not null,
    resource_id text,
    response_status integer,
    response_body text,
    created_at bigint not null,
    primary key (scope, key)
);
create index idempotency_keys_created on idempotency_keys (created_at);

-- per-endpoint rollup of attempts, maintained as attempts are recorded: minute buckets ('m')
-- answer the 1h window, hour buckets ('h') the 24h and 7d windows
create table endpoint_stats (
    endpoint_id text not null,
    tenant_id text not null,
    period text not null check (period in ('m', 'h')),
    bucket_start bigint not null,
    attempts bigint not null default 0,
    successes bigint not null default 0,
    failures bigint not null default 0,
    -- exact latency histogram: {"<milliseconds>": count}
    latency_counts text not null default '{}',
    primary key (endpoint_id, period, bucket_start)
);
create index endpoint_stats_period on endpoint_stats (period, bucket_start);
create index endpoint_stats_tenant on endpoint_stats (tenant_id, period, bucket_start);

-- guards for maintenance jobs that every replica may run at once
create table job_locks (
    name text primary key not null,
    holder text not null,
    locked_until bigint not null
);
