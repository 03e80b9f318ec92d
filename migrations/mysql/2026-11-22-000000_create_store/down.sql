DROP TABLE tasks;
DROP TABLE users;
DROP TABLE products;
DROP TABLE idempotency_keys;
DROP TABLE meta;
