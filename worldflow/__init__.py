"""worldflow."""
