-- W3C Trace Context (DESIGN §16): the traceparent and tracestate an ingest request carried, kept
-- with the event and sent (with a fresh span id) on every attempt of its deliveries.
alter table events add column traceparent text;
alter table events add column tracestate text;
