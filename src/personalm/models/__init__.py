"""Text generation, log-prob scoring and embeddings behind one interface."""
