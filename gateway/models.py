"""Every domain's ORM models in one place, for Alembic and for tests that need the whole
schema. A layer of its own (as Polar's ``models/__init__.py``): it imports every domain, so
nothing in the gateway imports it; ``migrations/env.py`` does."""

from __future__ import annotations


def import_all_models() -> None:
    from gateway.audit import models as _audit  # noqa: F401
    from gateway.jobs import models as _jobs  # noqa: F401
    from gateway.ledger import models as _ledger  # noqa: F401
    from gateway.tenancy import models as _tenancy  # noqa: F401
    from gateway.webhooks import models as _webhooks  # noqa: F401
