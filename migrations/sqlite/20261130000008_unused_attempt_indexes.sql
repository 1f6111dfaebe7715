-- No statement reads attempts by start time any more (the charts and rates come from
-- `endpoint_stats`; a delivery's attempts are read by `attempts_delivery_number`), yet every
-- attempt wrote an entry in both of these indexes when it opened and again when it finished.
drop index attempts_endpoint_started;
drop index attempts_started;
