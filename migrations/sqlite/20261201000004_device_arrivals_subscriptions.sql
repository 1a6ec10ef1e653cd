-- Issue 14 §11. How many times each device has connected: a device seen
-- before is never treated as new, even if it was sent nothing and
-- acknowledged nothing (its cursors are then 0, like a new device's), so
-- it still learns every removal of a key it may hold, its own writes
-- included. Rows that exist already are devices seen once.
ALTER TABLE instances ADD COLUMN arrivals INTEGER NOT NULL DEFAULT 1;
-- A device's subscriptions (`sync:subscribe`), kept with its cursors so
-- that they are restored when it reconnects, to this pod or another: a JSON
-- array of the patterns as the device wrote them; NULL for none (every key).
ALTER TABLE instances ADD COLUMN subscriptions TEXT;
