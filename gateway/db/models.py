"""Registry of every ORM module, so Alembic and tests see the whole schema."""

from __future__ import annotations


def import_all_models() -> None:
    from gateway.audit import models as _audit  # noqa: F401
    from gateway.jobs import models as _jobs  # noqa: F401
    from gateway.ledger import models as _ledger  # noqa: F401
    from gateway.proxy import idempotency_models as _idempotency  # noqa: F401
    from gateway.tenancy import models as _tenancy  # noqa: F401
