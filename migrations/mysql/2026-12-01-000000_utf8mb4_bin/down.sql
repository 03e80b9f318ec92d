-- Back to utf8mb4's default collation; idempotency keys stay byte for byte, as created.
ALTER TABLE meta CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE idempotency_keys CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE idempotency_keys MODIFY idem_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE products CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE users CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE tasks CONVERT TO CHARACTER SET utf8mb4;
ALTER TABLE apply_outcomes CONVERT TO CHARACTER SET utf8mb4;
