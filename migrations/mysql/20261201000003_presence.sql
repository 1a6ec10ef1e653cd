-- Presence derived from what is alive (issue 14 §5). A counter of
-- connections in `instances` could only be undone by the process that
-- counted, so a process killed with -9 left its devices online for good.
-- Instead each serving process has a row here, refreshed by its heartbeat,
-- and each open socket a row in `connections` under its process: a device
-- is online while it has a connection whose process has not expired. A
-- dead process's rows stop counting once it expires, and any process
-- sweeps them later.
CREATE TABLE processes (
    process_id   VARCHAR(64)  NOT NULL PRIMARY KEY,
    pod          VARCHAR(255) NOT NULL,
    started_at   BIGINT       NOT NULL,
    heartbeat_at BIGINT       NOT NULL,
    -- heartbeat_at plus the expiry this process announced: each process
    -- states its own deadline, so processes with different heartbeat
    -- intervals still judge one another right.
    expires_at   BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
CREATE INDEX processes_expiry ON processes (expires_at);
CREATE TABLE connections (
    process_id   VARCHAR(64)  NOT NULL,
    socket_id    VARCHAR(64)  NOT NULL,
    user_id      VARCHAR(255) NOT NULL,
    instance_id  VARCHAR(255) NOT NULL,
    connected_at BIGINT       NOT NULL,
    PRIMARY KEY (process_id, socket_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
CREATE INDEX connections_device ON connections (user_id, instance_id);
-- instances.connections is no longer written or read. It stays so that
-- pods of the previous release, which still count in it, keep working
-- during a rolling upgrade.
-- Key lengths in utf8mb4 (4 bytes a character): the primary key of
-- `connections` is 2 × 64 × 4 = 512 bytes and its device index 2 × 255 × 4
-- = 2040 bytes, both under InnoDB's 3072-byte limit, like `instances`.
