-- The audit trail cannot be blinded (issue 13, item 8): refused credentials
-- are summed per client IP, error code and key over a short window, one row
-- standing for `occurrences` refusals, so a flood costs bounded rows. Every
-- other entry stands for one occurrence. Write entries now carry the
-- request id (the column existed but was never filled): indexed for
-- GET /audit?requestId=.
ALTER TABLE audit_log ADD COLUMN occurrences BIGINT NOT NULL DEFAULT 1;
CREATE INDEX audit_log_request ON audit_log (request_id);
