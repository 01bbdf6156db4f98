-- Each reservation names the process instance that holds it (see
-- src/ledger/owners.rs), so a starting process can release the holds of a
-- process that was killed mid-call without touching those of processes
-- still running. Older rows have no owner and simply expire.
ALTER TABLE reservations ADD COLUMN owner TEXT;
CREATE INDEX reservations_by_owner ON reservations (owner);
