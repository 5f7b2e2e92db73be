"""Short-link service (issue 7): not built yet."""
