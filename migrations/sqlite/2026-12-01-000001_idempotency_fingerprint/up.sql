-- What a key was first used for (a hash of the operation), so that the key reused for another
-- operation is refused instead of answered with the first one's outcome. Keys recorded before
-- have none and keep answering as before.
ALTER TABLE idempotency_keys ADD COLUMN fingerprint TEXT;
