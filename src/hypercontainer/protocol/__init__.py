"""Host side of the host <-> guest protocol (docs/protocol.md)."""
