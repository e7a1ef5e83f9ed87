"""The project's tests, by kind: ``unit/`` in the test process alone, ``process/`` with the
exporter or the simulator as real processes, ``system/`` with the real tools the system
meets (Prometheus, Alertmanager, a browser, container and Kubernetes tools). The helpers
all three share sit here."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the checkout: deploy/, docs/, exporter/
TESTDATA = Path(__file__).resolve().parent / "testdata"  # files the tests read
