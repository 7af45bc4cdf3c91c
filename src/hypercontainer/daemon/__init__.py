"""hyperd: the REST API over a unix socket, state in sqlite, recovery at start."""
