"""What the tests share (no tests in here): fixtures, stand-ins, workers, wait helpers, the TCP proxy,
the history loader. Test modules are tests/test_*.py and tests/faults/test_*.py; helpers live only here."""
