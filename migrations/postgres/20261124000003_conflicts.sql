-- Detected conflicts: both sides (and the base), how they were settled,
-- and the review queue (status = 'pending').
CREATE TABLE conflicts (
    id                VARCHAR(36)  NOT NULL PRIMARY KEY,
    user_id           VARCHAR(255) NOT NULL,
    item_key          VARCHAR(256) NOT NULL,
    item_id           VARCHAR(36)  NOT NULL,
    strategy          VARCHAR(32)  NOT NULL,
    outcome           VARCHAR(32)  NOT NULL,
    status            VARCHAR(16)  NOT NULL,
    base_version      BIGINT,
    base_value        TEXT,
    current_version   BIGINT       NOT NULL,
    current_value     TEXT,
    current_instance  VARCHAR(255) NOT NULL,
    current_ts        BIGINT       NOT NULL,
    incoming_value    TEXT,
    incoming_metadata TEXT,
    incoming_instance VARCHAR(255) NOT NULL,
    incoming_ts       BIGINT       NOT NULL,
    result_value      TEXT,
    result_seq        BIGINT,
    resolver          VARCHAR(255),
    resolved_at       BIGINT,
    created_at        BIGINT       NOT NULL
);
CREATE INDEX conflicts_user_status ON conflicts (user_id, status, created_at);
CREATE INDEX conflicts_user_key ON conflicts (user_id, item_key, created_at);
CREATE INDEX conflicts_status ON conflicts (status, created_at);
