"""The console's pages, one module per area; each handler is a ``relay.console.web.Page``."""
