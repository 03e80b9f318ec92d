-- Who may log in to the HTTP API and the console (`--auth`), and their sessions. Replicated
-- like every table here: rows come only from applying committed log entries. Passwords are
-- stored as argon2id PHC strings and tokens as their SHA-256 (hex), never in clear.
CREATE TABLE accounts (
    name VARCHAR(64) PRIMARY KEY NOT NULL,
    role VARCHAR(8) NOT NULL CHECK (role IN ('viewer', 'member', 'admin')),
    password_hash VARCHAR(255) NOT NULL,
    created_at VARCHAR(32) NOT NULL,
    updated_at VARCHAR(32) NOT NULL
);

CREATE TABLE sessions (
    token_hash VARCHAR(64) PRIMARY KEY NOT NULL,
    account VARCHAR(64) NOT NULL,
    expires_at VARCHAR(32) NOT NULL,
    created_at VARCHAR(32) NOT NULL
);
CREATE INDEX sessions_account ON sessions (account);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
