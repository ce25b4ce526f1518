"""Helpers shared by the tests; ``tests/conftest.py`` (and ``tests/faults/conftest.py``) hold
fixtures only and import what they need from here.

- ``api``: the model, the submit route, and ``submit`` / ``submit_to`` / ``submit_async``;
- ``simulator``: the upstream key and ``SimulatorProbe``; ``settings``: ``gateway_settings``;
- ``servers``: in-process servers, ``StartGateway``, ``serving`` (a one-route server);
- ``processes``: replicas and the simulator as processes, ``replica_env``, ``free_port``;
- ``commands``: ``run`` / ``run_gateway`` and the environment commands run in;
- ``environment``: ``in_ci``, ``unavailable`` and ``require_tool`` (skip loudly, fail in CI);
- ``database``, ``tenants``, ``ledger``, ``rates``, ``ledger_generator``: databases, teams and
  keys, reading the ledger back, rate cards, a generated month;
- ``savepoint``: the fast tier's database, each test inside a transaction rolled back after it
  (the ``db`` and ``postgres_db`` fixtures; ``in_session``, ``make_tenant`` and
  ``team_ledger`` take it wherever they take a URL);
- ``invariants`` (``reconcile_pass``, ``settle_everything``, ``check_books``), ``load``,
  ``interleave``, ``tcp_proxy``, ``raw_upstream``: the fault suite's tools;
- ``images``, ``strategies``, ``browser``: payloads, Hypothesis strategies, headless Chromium.
"""
