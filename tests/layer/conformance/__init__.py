"""The channel layer contract, written once and run against every backend in ``BACKENDS``
(tests/layer/conftest.py): one module per part of the spec."""
