-- A lease is found through its open attempt, not through indexes on `deliveries.lease_until`.
-- Every lease is taken together with its open attempt row (one transaction), and lifted when
-- that row is finished, removed (a claim given back) or closed as `interrupted` (the reaper), so
-- the open attempts are the leases: a short list, where the lease indexes were two more entries
-- written on `deliveries` at every claim and every outcome. Without an index on its columns, a
-- claim changes no indexed column of `deliveries`: on PostgreSQL it is a heap-only (HOT) update
-- that writes no index entry at all, given room on the row's page.
drop index deliveries_leased;
drop index deliveries_endpoint_leased;
drop index attempts_open;
create index attempts_open on attempts (endpoint_id, delivery_id) where finished_at is null;

-- Room on each page for a claim's new row version beside the old one (a HOT update must stay
-- on its page); pages written from now on are filled to 80 %.
alter table deliveries set (fillfactor = 80);
