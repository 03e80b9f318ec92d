-- Ids as the tables' rowid. In SQLite only a column declared INTEGER PRIMARY KEY is the rowid
-- itself; BIGINT PRIMARY KEY kept a second B-tree beside the table (a unique index on id), which
-- every insert wrote and every lookup by id searched before the table. The values are the same
-- (SQLite's integers are 64-bit either way), and so are the columns, constraints and indexes.
-- users stays as it was: tasks refer to it, and foreign keys cannot be switched off inside the
-- transaction a migration runs in.

CREATE TABLE products_by_rowid (
    id INTEGER PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    price DOUBLE NOT NULL,
    currency VARCHAR(3) NOT NULL,
    converted_price DOUBLE,
    converted_currency VARCHAR(3),
    availability TEXT,
    rating INTEGER,
    link TEXT,
    scraped_at VARCHAR(32),
    created_at VARCHAR(32) NOT NULL,
    updated_at VARCHAR(32) NOT NULL
);
INSERT INTO products_by_rowid (id, title, price, currency, converted_price, converted_currency, availability,
        rating, link, scraped_at, created_at, updated_at)
    SELECT id, title, price, currency, converted_price, converted_currency, availability, rating, link,
        scraped_at, created_at, updated_at
    FROM products;
DROP TABLE products;
ALTER TABLE products_by_rowid RENAME TO products;
CREATE INDEX products_price ON products (price);

CREATE TABLE tasks_by_rowid (
    id INTEGER PRIMARY KEY NOT NULL,
    title TEXT NOT NULL,
    description TEXT,
    due_date VARCHAR(10),
    status VARCHAR(16) NOT NULL CHECK (status IN ('todo', 'in_progress', 'done')),
    priority VARCHAR(8) NOT NULL CHECK (priority IN ('low', 'medium', 'high')),
    assignee BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at VARCHAR(32) NOT NULL,
    updated_at VARCHAR(32) NOT NULL
);
INSERT INTO tasks_by_rowid (id, title, description, due_date, status, priority, assignee, created_at, updated_at)
    SELECT id, title, description, due_date, status, priority, assignee, created_at, updated_at FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_by_rowid RENAME TO tasks;
CREATE INDEX tasks_status ON tasks (status);
CREATE INDEX tasks_priority ON tasks (priority);
CREATE INDEX tasks_assignee ON tasks (assignee);

CREATE TABLE apply_outcomes_by_rowid (
    log_index INTEGER PRIMARY KEY NOT NULL,
    outcome TEXT NOT NULL
);
INSERT INTO apply_outcomes_by_rowid (log_index, outcome) SELECT log_index, outcome FROM apply_outcomes;
DROP TABLE apply_outcomes;
ALTER TABLE apply_outcomes_by_rowid RENAME TO apply_outcomes;
