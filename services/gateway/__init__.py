"""gateway: terminates device connections and places each session on every stage."""
