"""Adapters to the world outside: carriers, payment gateways, notifications (and their fakes)."""
