"""The SQL stores of a unit of work, one per table (or pair of tables)."""
