"""The server's routers, one per part of the API; each is built around the `Served` it answers from."""
