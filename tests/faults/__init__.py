"""The fault suite: real Postgres, the real simulator, real processes, faults injected."""
