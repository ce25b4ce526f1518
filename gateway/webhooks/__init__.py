"""Team webhooks: subscriptions, the events settlements and budget alerts write (an outbox in
the ledger's own transaction), and each event's delivery to each subscription."""
