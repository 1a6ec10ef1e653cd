-- A device told to resync (its cursor was older than the tombstone
-- retention, or its subscriptions widened) owes a full re-fetch until it
-- makes one (`sync:getAll` without a prefix). Recorded, so that a device
-- that drops before it re-fetches, on any pod and after any restart, is
-- told again instead of resuming as if it had.
ALTER TABLE instances ADD COLUMN resync_due SMALLINT NOT NULL DEFAULT 0;
