"""The OpenAI-compatible server, its web chat page, and API-key tenancy."""
