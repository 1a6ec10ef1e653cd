-- Devices are per user (issue 13, item 10): a user who named a device
-- `rest` (every REST call's default) saw every user's REST traffic under
-- /analytics/instances/rest. Rollups, histograms and first/last seen now
-- carry the user a subject belongs to (`user_id`): set for the per-user
-- dimensions (user, user_route, instance, instance_route), '' for those
-- that span users (all, route, key). The existing user rows get their
-- user back from the subject; existing device rows cannot (their users
-- were summed together), so they stay '' and only the cross-user view of
-- an `analytics:read` caller counts them. The new columns take the tables'
-- NO PAD binary collation (20261127100001). Keys stay under InnoDB's
-- 3072 bytes: (1 + 16 + 255 + 255) × 4 + 8.
ALTER TABLE analytics_rollups ADD COLUMN user_id VARCHAR(255) NOT NULL DEFAULT '' AFTER subject;
UPDATE analytics_rollups SET user_id = subject WHERE dim = 'user';
UPDATE analytics_rollups SET user_id = SUBSTRING_INDEX(subject, CHAR(31 USING utf8mb4) COLLATE utf8mb4_nopad_bin, 1) WHERE dim = 'user_route';
ALTER TABLE analytics_rollups DROP PRIMARY KEY, ADD PRIMARY KEY (granularity, dim, subject, user_id, bucket);

ALTER TABLE analytics_latency ADD COLUMN user_id VARCHAR(255) NOT NULL DEFAULT '' AFTER subject;
ALTER TABLE analytics_latency DROP PRIMARY KEY, ADD PRIMARY KEY (granularity, dim, subject, user_id, bucket, le);

ALTER TABLE analytics_instances ADD COLUMN user_id VARCHAR(255) NOT NULL DEFAULT '';
ALTER TABLE analytics_instances DROP PRIMARY KEY, ADD PRIMARY KEY (instance_id, user_id);
