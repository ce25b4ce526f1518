"""Billing-aware API gateway."""
