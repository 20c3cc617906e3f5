"""Documentation and deployment checked against the code: the docs must not drift from it."""
