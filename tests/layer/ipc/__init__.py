"""Tests of the IPC backend (``layer.ipc``), one module per part."""
