"""The `parley` command: talk to a running stack, benchmark it, or run it."""
