"""Development tools: synthetic events and the demo; never part of the running daemon."""
