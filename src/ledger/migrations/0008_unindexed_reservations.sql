-- Fewer pages written per call: the reservations table loses its indexes.
--
-- A reservation lives only while its call is in flight (settlement deletes
-- it, expiry and the dead-owner sweep clear the rest), so the table holds
-- tens of rows, one or two pages. Reading it whole for a sum or a sweep
-- costs microseconds; keeping two indexes on it cost two more page writes
-- to the WAL on every hold and two more on every settlement, about a third
-- of all the pages a call wrote (profile: docs/BENCHMARKS.md, "Ledger").
DROP INDEX reservations_by_user;
DROP INDEX reservations_by_owner;
