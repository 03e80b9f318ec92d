DROP TABLE apply_outcomes;
