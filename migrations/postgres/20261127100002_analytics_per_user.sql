-- Devices are per user (issue 13, item 10): a user who named a device
-- `rest` (every REST call's default) saw every user's REST traffic under
-- /analytics/instances/rest. Rollups, histograms and first/last seen now
-- carry the user a subject belongs to (`user_id`): set for the per-user
-- dimensions (user, user_route, instance, instance_route), '' for those
-- that span users (all, route, key). The existing user rows get their
-- user back from the subject; existing device rows cannot (their users
-- were summed together), so they stay '' and only the cross-user view of
-- an `analytics:read` caller counts them.
ALTER TABLE analytics_rollups ADD COLUMN user_id VARCHAR(255) NOT NULL DEFAULT '';
UPDATE analytics_rollups SET user_id = subject WHERE dim = 'user';
UPDATE analytics_rollups SET user_id = split_part(subject, chr(31), 1) WHERE dim = 'user_route';
ALTER TABLE analytics_rollups DROP CONSTRAINT analytics_rollups_pkey;
ALTER TABLE analytics_rollups ADD PRIMARY KEY (granularity, dim, subject, user_id, bucket);

ALTER TABLE analytics_latency ADD COLUMN user_id VARCHAR(255) NOT NULL DEFAULT '';
ALTER TABLE analytics_latency DROP CONSTRAINT analytics_latency_pkey;
ALTER TABLE analytics_latency ADD PRIMARY KEY (granularity, dim, subject, user_id, bucket, le);

ALTER TABLE analytics_instances ADD COLUMN user_id VARCHAR(255) NOT NULL DEFAULT '';
ALTER TABLE analytics_instances DROP CONSTRAINT analytics_instances_pkey;
ALTER TABLE analytics_instances ADD PRIMARY KEY (instance_id, user_id);
