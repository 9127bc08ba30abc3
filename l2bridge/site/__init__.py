"""The running site: its state, the outbound and inbound directions, peer events,
status views, and the worker processes that share one site across cores."""
