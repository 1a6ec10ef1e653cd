-- Devices: each (user, instance) has a cursor, the last seq the device
-- acknowledged, and session facts for GET /sync-storage/sessions.
CREATE TABLE instances (
    user_id      VARCHAR(255) NOT NULL,
    instance_id  VARCHAR(255) NOT NULL,
    cursor_seq   BIGINT       NOT NULL DEFAULT 0,
    first_seen   BIGINT       NOT NULL,
    last_seen    BIGINT       NOT NULL,
    connected_at BIGINT,
    connections  BIGINT       NOT NULL DEFAULT 0,
    pod          VARCHAR(255),
    ip           VARCHAR(64),
    user_agent   VARCHAR(512),
    PRIMARY KEY (user_id, instance_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX sync_items_tombstones ON sync_items (is_deleted, last_modified);
