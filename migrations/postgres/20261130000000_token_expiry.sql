-- Tokens may expire (portal links, short-lived tokens); NULL = never.
alter table tokens add column expires_at bigint;
