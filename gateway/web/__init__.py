"""HTTP plumbing of the entry layer: the request dependencies (the runtime, who is calling), the
error handlers, and the operator probes. The routes themselves live in ``proxy`` (tenant) and
``admin`` (operators, finance)."""
