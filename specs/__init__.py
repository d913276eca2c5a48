"""What must always be true, stated once: the ABI, profiles, the trace contract, invariants."""
