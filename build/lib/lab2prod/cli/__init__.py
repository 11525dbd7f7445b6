"""The `lab2prod` command, one module per command group."""
