"""The simulated outside world over real HTTP, for the tests, the benchmarks and ``watchdogd demo``.

Nothing in watchdogd itself imports it (tests/unit/test_import_graph.py): the simulators are
peers, met only through their HTTP APIs, as the real ones are.
"""
