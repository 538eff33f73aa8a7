"""FedSilo code shared by the server and the sites (never imports server/ or client/)."""
