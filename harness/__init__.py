"""Real processes that both the tests and the benchmarks start: free loopback ports and
``redis-server`` instances of their own. Not part of the installed kit (``layer``, ``services``)."""
