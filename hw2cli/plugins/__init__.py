"""Built-in plugins: one command module per task. Their specs live in ``builtin`` (not here:
importing a command module such as ``hw2cli.plugins.ddpm`` sets that name on this package,
which would shadow a spec of the same name)."""
