"""FedSilo site: the ClientApp that trains next to the site's data, and the fl-client tool."""
