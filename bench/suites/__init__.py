"""One module per suite; each exposes ``run(quick: bool) -> SuiteResult``."""
