-- Retried writes are the same write (issue 14 §2). A write that carries an
-- operation id (REST's Idempotency-Key header, a socket write's opId) is
-- recorded here in its own transaction, with a fingerprint of the request
-- and the reply it got; a retry with the same id gets that reply again
-- instead of being applied twice, on every pod. Rows older than
-- IDEMPOTENCY_WINDOW_MS are ignored and swept.
CREATE TABLE idempotency_records (
    user_id      VARCHAR(255) NOT NULL,
    operation_id VARCHAR(255) NOT NULL,
    fingerprint  VARCHAR(64)  NOT NULL,
    reply        TEXT         NOT NULL,
    created_at   BIGINT       NOT NULL,
    PRIMARY KEY (user_id, operation_id)
);
CREATE INDEX idempotency_records_created ON idempotency_records (created_at);
