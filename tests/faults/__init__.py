"""Fault tests: real processes on loopback, broken on purpose (issue 8). `make test-faults` runs them
alone (~3.5 min on the 2-core machine); `make test` runs them with everything else.

- test_worker_crash.py: `python -m worker` subprocesses SIGKILLed at every step of a rollback, a
  Level 2 degradation and a Phase 2 canary; a standby finishes (crash points hit through proxies,
  tests/support/crew.py).
- test_etcd_outage.py / test_etcd_cluster.py: etcd SIGKILLed around a change set's transaction;
  a 3-member cluster losing a member and its leader.
- test_temporal_restart.py: the dev server SIGKILLed and restarted on its --db-filename.
- test_core_faults.py: the trading core answering 500/503/timeouts/malformed JSON/400.
- test_two_writers.py, test_decisions.py: concurrent writers; decisions twice, late, misdirected.
- test_fuzz.py: hypothesis over every input surface (the count is printed at the end of the run).
- test_secrets_in_logs.py: the configured secrets searched for in every log of a full scenario.

Fixtures (conftest.py) start their own Temporal dev server (state in a file), worker and monitor
subprocesses, proxies, etcd nodes and clusters, and stop each of them at teardown.
"""
