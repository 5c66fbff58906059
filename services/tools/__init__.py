"""tools: the one place tools live; stateless request/reply on the bus."""
