"""The report: its schema (the contract other tools read) and its writers."""
