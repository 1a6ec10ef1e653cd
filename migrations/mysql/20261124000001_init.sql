-- syncstore initial schema (MySQL / MariaDB). Flags are SMALLINT 0/1 because
-- sqlx's Any driver does not map TINYINT(1). Times are Unix milliseconds (BIGINT) in
-- every dialect, so the same queries and decoders serve all three backends.

-- The seed's SyncStorageItem, plus `seq`: the user's sequence number of the
-- last change to this item. Removes are tombstones (is_deleted, value NULL).
CREATE TABLE sync_items (
    id               VARCHAR(36)  NOT NULL PRIMARY KEY,
    user_id          VARCHAR(255) NOT NULL,
    instance_id      VARCHAR(255) NOT NULL,
    item_key         VARCHAR(256) NOT NULL,
    value            MEDIUMTEXT,
    metadata         MEDIUMTEXT,
    version          BIGINT       NOT NULL DEFAULT 1,
    timestamp        BIGINT       NOT NULL,
    last_modified    BIGINT       NOT NULL,
    is_deleted       SMALLINT      NOT NULL DEFAULT 0,
    size             BIGINT       NOT NULL DEFAULT 0,
    compression_type VARCHAR(64),
    encryption_type  VARCHAR(64),
    tags             TEXT,
    ttl              BIGINT,
    priority         BIGINT       NOT NULL DEFAULT 0,
    seq              BIGINT       NOT NULL,
    created_at       BIGINT       NOT NULL,
    UNIQUE (user_id, item_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX sync_items_user_seq ON sync_items (user_id, seq);
CREATE INDEX sync_items_user_instance ON sync_items (user_id, instance_id);
CREATE INDEX sync_items_timestamp ON sync_items (timestamp);
CREATE INDEX sync_items_ttl ON sync_items (ttl);

-- One row per user: the sequence head, the storage used by live items, and
-- the seq at or below which tombstones have been purged. Its row lock
-- serialises one user's writes (and only that user's).
CREATE TABLE user_state (
    user_id    VARCHAR(255) NOT NULL PRIMARY KEY,
    last_seq   BIGINT       NOT NULL DEFAULT 0,
    bytes_used BIGINT       NOT NULL DEFAULT 0,
    purged_seq BIGINT       NOT NULL DEFAULT 0,
    updated_at BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The last N values of each item: the base for three-way merges and history.
CREATE TABLE item_versions (
    user_id     VARCHAR(255) NOT NULL,
    item_key    VARCHAR(256) NOT NULL,
    version     BIGINT       NOT NULL,
    seq         BIGINT       NOT NULL,
    instance_id VARCHAR(255) NOT NULL,
    value       MEDIUMTEXT,
    metadata    MEDIUMTEXT,
    is_deleted  SMALLINT      NOT NULL DEFAULT 0,
    timestamp   BIGINT       NOT NULL,
    created_at  BIGINT       NOT NULL,
    PRIMARY KEY (user_id, item_key, version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The seed's ApiKey, with its owner and the SHA-256 of the key, never the key.
CREATE TABLE api_keys (
    id                   VARCHAR(36)  NOT NULL PRIMARY KEY,
    name                 VARCHAR(255) NOT NULL,
    key_hash             VARCHAR(64)  NOT NULL UNIQUE,
    key_hint             VARCHAR(32)  NOT NULL,
    user_id              VARCHAR(255) NOT NULL,
    is_active            SMALLINT      NOT NULL DEFAULT 1,
    expires_at           BIGINT,
    can_read             SMALLINT      NOT NULL DEFAULT 1,
    can_write            SMALLINT      NOT NULL DEFAULT 1,
    scopes               TEXT,
    ip_restrictions      TEXT,
    country_restrictions TEXT,
    domain_restrictions  TEXT,
    user_agent_patterns  TEXT,
    quota_per_minute     BIGINT,
    quota_per_hour       BIGINT,
    quota_per_day        BIGINT,
    quota_per_month      BIGINT,
    usage_today          BIGINT       NOT NULL DEFAULT 0,
    usage_this_month     BIGINT       NOT NULL DEFAULT 0,
    last_used_at         BIGINT,
    created_at           BIGINT       NOT NULL,
    updated_at           BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE audit_log (
    id         VARCHAR(36)  NOT NULL PRIMARY KEY,
    ts         BIGINT       NOT NULL,
    actor      VARCHAR(255) NOT NULL,
    action     VARCHAR(64)  NOT NULL,
    target     VARCHAR(512),
    ip         VARCHAR(64),
    result     VARCHAR(64)  NOT NULL,
    request_id VARCHAR(128),
    details    TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_actor ON audit_log (actor, ts);
