"""Test doubles and helpers shared by the test suites (importable as `support`: pytest puts tests/ on the
path, see `pythonpath` in pyproject.toml). Nothing here ships in the package.

- fakes: an in-memory arm and policies for the engine's unit tests;
- faults: the simulated arm's fault injection, driven from tests;
- engine_record: what the real engine says in each state, for the UI snapshots;
- other_sts3215_sim: a second, independent STS3215 simulator (run as a program).
"""
