-- Every text column as utf8mb4 compared byte for byte (utf8mb4_bin), whatever the server's or
-- the database's defaults. The tables were created with the database's default character set,
-- which may be latin1 or utf8mb3: neither holds every character a client may send (an emoji
-- needs utf8mb4), and in strict mode MySQL refuses such a row with an error that is no
-- constraint, so the entry could never be applied. And the default collations compare without
-- case and accents, so that `josé@example.org` and `jose@example.org` were the same e-mail
-- here but two on PostgreSQL and SQLite; now all backends agree.
ALTER TABLE meta CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE idempotency_keys CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE products CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE users CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE tasks CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE apply_outcomes CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
