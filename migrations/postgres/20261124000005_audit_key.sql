-- Which API key (or token family's issuing key) acted, for GET /audit?keyId=.
ALTER TABLE audit_log ADD COLUMN key_id VARCHAR(36);
CREATE INDEX audit_log_key ON audit_log (key_id, ts);
