"""The built-in plugins' specs. Each is named by an entry point in ``pyproject.toml``
(group ``hw2.plugins``), exactly as a third-party plugin would be; the command modules they
point to are imported only when one of their commands runs."""

from hw2cli.registry import Plugin

HOMEWORK = "Homework"
TOOLS = "Tools"

data = Plugin(
    name="data",
    help="Synthetic MNIST-M / SVHN look-alikes in the homework layout; check a data folder.",
    app="hw2cli.plugins.data:app",
    panel=TOOLS,
)

