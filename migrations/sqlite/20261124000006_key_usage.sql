-- The day (YYYYMMDD) and month (YYYYMM) that usage_today and
-- usage_this_month count, so a flush after midnight starts them over.
ALTER TABLE api_keys ADD COLUMN usage_day BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN usage_month BIGINT NOT NULL DEFAULT 0;
