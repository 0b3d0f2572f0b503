"""Inbound events: what carriers, the payment gateway and the merchant and buyer front ends tell us.

``envelope`` is the JSON document every producer sends; ``mapping`` says, as data, what each event
type does to a case in each state (docs/events.md has the table); ``ingestion`` applies an event
once, in one transaction with its (source, event id) record, and keeps one that cannot apply as a
dead letter; ``lookup`` finds the case an event names; ``schema`` publishes the JSON Schema.
"""
