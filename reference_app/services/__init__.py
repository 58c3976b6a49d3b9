"""Domain services: each works in the current app context's session."""
