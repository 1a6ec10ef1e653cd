-- Byte-exact text (issue 13, item 9): on MariaDB this migration moves every
-- table to the NO PAD binary collation. This dialect already compares text
-- byte by byte (SQLite's BINARY collation; PostgreSQL's deterministic
-- collation), so 'alice' and 'alice ' are already two users: nothing to do.
-- Kept so that every dialect has the same list of versions.
SELECT 1;
