-- The highest seq each device was sent (issue 14 §1), beside the cursor it
-- acknowledged (cursor_seq). A client written from the seed's README never
-- acknowledges; it resumes from what it was sent, so it still learns every
-- removal and is not sent again what it already has.
ALTER TABLE instances ADD COLUMN delivered_seq BIGINT NOT NULL DEFAULT 0;
-- Whether the device has ever acknowledged: only then is cursor_seq its
-- resume point (an acknowledged cursor may well be 0).
ALTER TABLE instances ADD COLUMN has_acked SMALLINT NOT NULL DEFAULT 0;
