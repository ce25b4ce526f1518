"""Application services: the orchestrators that combine several domains with the outside world
(the upstream, the clock, metrics, webhooks) and own the transactions they open. Domains below
only flush in the caller's session; entry points above only translate HTTP or a command line
into a call here. Each takes the collaborators it uses, never the whole runtime."""
