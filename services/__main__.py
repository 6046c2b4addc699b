"""``python -m services`` is ``layerkit``."""

from __future__ import annotations

from services.cli import main

main()
