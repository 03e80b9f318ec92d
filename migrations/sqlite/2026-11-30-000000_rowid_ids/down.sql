-- Back to BIGINT PRIMARY KEY ids (a unique index on id beside each table's rowid).

CREATE TABLE products_with_id_index (
    id BIGINT PRIMARY KEY NOT NULL,
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
INSERT INTO products_with_id_index (id, title, price, currency, converted_price, converted_currency, availability,
        rating, link, scraped_at, created_at, updated_at)
    SELECT id, title, price, currency, converted_price, converted_currency, availability, rating, link,
        scraped_at, created_at, updated_at
    FROM products;
DROP TABLE products;
ALTER TABLE products_with_id_index RENAME TO products;
CREATE INDEX products_price ON products (price);

CREATE TABLE tasks_with_id_index (
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
INSERT INTO tasks_with_id_index (id, title, description, due_date, status, priority, assignee, created_at, updated_at)
    SELECT id, title, description, due_date, status, priority, assignee, created_at, updated_at FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_with_id_index RENAME TO tasks;
CREATE INDEX tasks_status ON tasks (status);
CREATE INDEX tasks_priority ON tasks (priority);
CREATE INDEX tasks_assignee ON tasks (assignee);

CREATE TABLE apply_outcomes_with_id_index (
    log_index BIGINT PRIMARY KEY NOT NULL,
    outcome TEXT NOT NULL
);
INSERT INTO apply_outcomes_with_id_index (log_index, outcome) SELECT log_index, outcome FROM apply_outcomes;
DROP TABLE apply_outcomes;
ALTER TABLE apply_outcomes_with_id_index RENAME TO apply_outcomes;
