"""Data: sources, tokenisation and chat templates, collation, and the built-in world."""
