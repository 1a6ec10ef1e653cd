-- Devices are per user (issue 13, item 10): a user who named a device
-- `rest` (every REST call's default) saw every user's REST traffic under
-- /analytics/instances/rest. Rollups, histograms and first/last seen now
-- carry the user a subject belongs to (`user_id`): set for the per-user
-- dimensions (user, user_route, instance, instance_route), '' for those
-- that span users (all, route, key). The existing user rows get their
-- user back from the subject; existing device rows cannot (their users
-- were summed together), so they stay '' and only the cross-user view of
-- an `analytics:read` caller counts them. SQLite cannot change a primary
-- key in place, so each table is rebuilt.
CREATE TABLE analytics_rollups_new (
    granularity VARCHAR(1) NOT NULL,
    bucket BIGINT NOT NULL,
    dim VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NOT NULL DEFAULT '',
    requests BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    denials BIGINT NOT NULL DEFAULT 0,
    bytes_in BIGINT NOT NULL DEFAULT 0,
    bytes_out BIGINT NOT NULL DEFAULT 0,
    latency_sum_us BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (granularity, dim, subject, user_id, bucket)
);
INSERT INTO analytics_rollups_new (granularity, bucket, dim, subject, user_id, requests, errors,
    denials, bytes_in, bytes_out, latency_sum_us)
SELECT granularity, bucket, dim, subject,
    CASE dim
        WHEN 'user' THEN subject
        WHEN 'user_route' THEN substr(subject, 1, instr(subject, char(31)) - 1)
        ELSE ''
    END,
    requests, errors, denials, bytes_in, bytes_out, latency_sum_us
FROM analytics_rollups;
DROP TABLE analytics_rollups;
ALTER TABLE analytics_rollups_new RENAME TO analytics_rollups;

CREATE TABLE analytics_latency_new (
    granularity VARCHAR(1) NOT NULL,
    bucket BIGINT NOT NULL,
    dim VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NOT NULL DEFAULT '',
    le INTEGER NOT NULL,
    n BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (granularity, dim, subject, user_id, bucket, le)
);
INSERT INTO analytics_latency_new (granularity, bucket, dim, subject, user_id, le, n)
SELECT granularity, bucket, dim, subject, '', le, n FROM analytics_latency;
DROP TABLE analytics_latency;
ALTER TABLE analytics_latency_new RENAME TO analytics_latency;

CREATE TABLE analytics_instances_new (
    instance_id VARCHAR(255) NOT NULL,
    user_id VARCHAR(255) NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (instance_id, user_id)
);
INSERT INTO analytics_instances_new (instance_id, user_id, first_seen, last_seen)
SELECT instance_id, '', first_seen, last_seen FROM analytics_instances;
DROP TABLE analytics_instances;
ALTER TABLE analytics_instances_new RENAME TO analytics_instances;
