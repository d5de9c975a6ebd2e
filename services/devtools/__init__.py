"""Local-development helpers: embedded Postgres/Redis and the :3000 origin (never used in deploy)."""
