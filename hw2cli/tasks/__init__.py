"""Task cores: one function per command, called by the thin plugins. They never print and
never read argv; progress reaches the caller through callbacks."""
