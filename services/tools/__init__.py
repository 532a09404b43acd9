"""Command-line tools for people who use the platform (installed with the project)."""
