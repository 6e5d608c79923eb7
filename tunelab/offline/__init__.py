"""Offline (bulk) inference: predict ahead of time into a SQLite store, answer live traffic from it over HTTP."""
