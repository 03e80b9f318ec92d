-- What applying each recent log entry answered, written in the transaction that applied it.
-- Nodes sharing one database take turns applying; a node that finds an entry applied by
-- another reads the outcome here, so the client that wrote it gets the real answer.
CREATE TABLE apply_outcomes (
    log_index BIGINT PRIMARY KEY NOT NULL,
    outcome TEXT NOT NULL
);
