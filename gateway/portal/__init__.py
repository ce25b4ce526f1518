"""The team self-service portal under ``/portal/`` (server-rendered pages, no JavaScript)."""
