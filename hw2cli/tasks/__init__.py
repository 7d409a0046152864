"""Task cores: one function per command, called by the thin plugins. They never print and
never read argv, and they name parameters, not flags (errors carry ``{opt:name}``, which the CLI
renders as ``--name``); progress reaches the caller through callbacks.

``training`` holds what both trainers share (deferred Ctrl-C/SIGTERM, the run-folder rule, the
``state-NNNNNNN`` resume state on accelerate, JSON random-number states, logs); ``grading`` the
three graders (P1 accuracy, P2 MSE, P3 CLIP scores).
"""
