-- An endpoint's payload filter (JSON, as written); NULL = every event of its subscribed types.
alter table endpoints add column filter text;
