"""Runs one throwaway PostgreSQL cluster for the tests that need one outside pytest (the
database unit tests, tests/unit/db): prints its URL on one line once it accepts
connections, and destroys it on SIGTERM, SIGINT or SIGHUP, or when the process that
started it is gone.

  /usr/bin/python3 tests/harness/pgserve.py > url-file &
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from harness.pgcluster import PgCluster  # noqa: E402

stop = False


def on_signal(signum, frame):
    global stop
    stop = True


def main():
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    parent = os.getppid()
    cluster = PgCluster()
    try:
        cluster.start()
        print(cluster.createdb('steward_unit'), flush=True)
        while not stop and os.getppid() == parent:
            time.sleep(0.2)
    finally:
        cluster.destroy()


if __name__ == '__main__':
    main()
