"""The dashboard's pages, one module per page: they compose flags, monitoring and alerts, and sit above them."""
