"""The command line: one module per command group, the exit codes and shared rendering."""
