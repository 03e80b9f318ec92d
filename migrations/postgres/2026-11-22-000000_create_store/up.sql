-- Replicated state of a node (PostgreSQL; the same tables as migrations/sqlite). Every row here
-- is the result of applying committed Raft log entries in index order. Ids are assigned by the
-- store from counters in `meta`, never by the database, so every node ends with the same ids.

-- One row: the last applied log entry and the next id of each table.
CREATE TABLE meta (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_index BIGINT NOT NULL,
    last_term BIGINT NOT NULL,
    next_product_id BIGINT NOT NULL,
    next_user_id BIGINT NOT NULL,
    next_task_id BIGINT NOT NULL
);
INSERT INTO meta (id, last_index, last_term, next_product_id, next_user_id, next_task_id)
VALUES (1, 0, 0, 1, 1, 1);

-- The first outcome of each write that carried an Idempotency-Key.
CREATE TABLE idempotency_keys (
    idem_key VARCHAR(255) PRIMARY KEY NOT NULL,
    log_index BIGINT NOT NULL,
    outcome TEXT NOT NULL
);

CREATE TABLE products (
    id BIGINT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    price DOUBLE PRECISION NOT NULL,
    currency VARCHAR(3) NOT NULL,
    converted_price DOUBLE PRECISION,
    converted_currency VARCHAR(3),
    availability TEXT,
    rating INTEGER,
    link TEXT,
    scraped_at VARCHAR(32),
    created_at VARCHAR(32) NOT NULL,
    updated_at VARCHAR(32) NOT NULL
);
CREATE INDEX products_price ON products (price);

CREATE TABLE users (
    id BIGINT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    email VARCHAR(254) NOT NULL UNIQUE,
    created_at VARCHAR(32) NOT NULL
);

CREATE TABLE tasks (
    id BIGINT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    description TEXT,
    due_date VARCHAR(10),
    status VARCHAR(16) NOT NULL CHECK (status IN ('todo', 'in_progress', 'done')),
    priority VARCHAR(8) NOT NULL CHECK (priority IN ('low', 'medium', 'high')),
    assignee BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at VARCHAR(32) NOT NULL,
    updated_at VARCHAR(32) NOT NULL
);
CREATE INDEX tasks_status ON tasks (status);
CREATE INDEX tasks_priority ON tasks (priority);
CREATE INDEX tasks_assignee ON tasks (assignee);
