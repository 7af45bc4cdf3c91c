"""Command lines: hyperctl (talks to hyperd) and runv (an OCI runtime)."""
