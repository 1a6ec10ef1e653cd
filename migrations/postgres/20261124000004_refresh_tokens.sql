-- Refresh tokens: one row per issued token (by its id, `jti`), chained in a
-- family. A token is used once; using it again revokes its whole family.
CREATE TABLE refresh_tokens (
    jti          VARCHAR(36)  NOT NULL PRIMARY KEY,
    family_id    VARCHAR(36)  NOT NULL,
    parent_jti   VARCHAR(36),
    user_id      VARCHAR(255) NOT NULL,
    issued_by    VARCHAR(36)  NOT NULL,
    scopes       TEXT         NOT NULL,
    expires_at   BIGINT       NOT NULL,
    used_at      BIGINT,
    revoked_at   BIGINT,
    created_at   BIGINT       NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
