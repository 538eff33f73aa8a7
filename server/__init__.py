"""FedSilo coordinator: the ServerApp, its strategy, and the fl-server / fl-sim / fl-predict tools."""
