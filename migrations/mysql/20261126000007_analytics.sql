-- Analytics aggregates (DESIGN §8). Rollups and latency histograms per
-- granularity (m, h, d) and dimension; facet counters per day; the users
-- and instances seen; and the Kafka offsets, written in the same
-- transaction as the aggregates so that redelivery never double-counts.
CREATE TABLE analytics_rollups (
    granularity VARCHAR(1) NOT NULL,
    bucket BIGINT NOT NULL,
    dim VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    denials BIGINT NOT NULL DEFAULT 0,
    bytes_in BIGINT NOT NULL DEFAULT 0,
    bytes_out BIGINT NOT NULL DEFAULT 0,
    latency_sum_us BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (granularity, dim, subject, bucket)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE analytics_latency (
    granularity VARCHAR(1) NOT NULL,
    bucket BIGINT NOT NULL,
    dim VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    le INTEGER NOT NULL,
    n BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (granularity, dim, subject, bucket, le)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE analytics_facets (
    scope VARCHAR(16) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    facet VARCHAR(16) NOT NULL,
    value VARCHAR(255) NOT NULL,
    day BIGINT NOT NULL,
    n BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, subject, facet, value, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE analytics_user_days (
    user_id VARCHAR(255) NOT NULL,
    day BIGINT NOT NULL,
    PRIMARY KEY (user_id, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX analytics_user_days_day ON analytics_user_days (day);
CREATE TABLE analytics_users (
    user_id VARCHAR(255) NOT NULL PRIMARY KEY,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE analytics_instances (
    instance_id VARCHAR(255) NOT NULL PRIMARY KEY,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE analytics_offsets (
    topic VARCHAR(255) NOT NULL,
    part INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, part)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
