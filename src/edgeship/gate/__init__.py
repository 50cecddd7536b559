"""Budgets: the limits a release must meet, checked against a report."""
