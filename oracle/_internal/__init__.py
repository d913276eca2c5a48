"""The oracle's engine; no stability promise."""
