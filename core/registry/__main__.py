"""``python -m tether.registry serve ...`` — the registry CLI group without the main ``tether`` command."""

from tether.registry.cli import main

main()
