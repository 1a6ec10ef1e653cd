-- Byte-exact text (issue 13, item 9). utf8mb4_bin is a PAD SPACE
-- collation: it compares 'alice' and 'alice ' as equal, so a token for
-- 'alice ' read and cleared alice's items, and the keys 'a' and 'a '
-- collided on the unique index. utf8mb4_nopad_bin (MariaDB 10.2 and later)
-- compares the bytes as they are, as PostgreSQL and SQLite already do.
-- Same character set, so no column changes type or length, and no index
-- grows; existing rows cannot clash (NO PAD only tells more values apart).
-- Tables added later must state COLLATE=utf8mb4_nopad_bin themselves.
ALTER TABLE sync_items CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE user_state CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE item_versions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE api_keys CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE audit_log CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE instances CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE conflicts CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE refresh_tokens CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_rollups CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_latency CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_facets CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_user_days CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_users CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_instances CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
ALTER TABLE analytics_offsets CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin;
