"""``python -m exporter`` and the ``realtimekit-exporter`` command.

SIGHUP is ignored first of all, before the imports of :func:`main` (a few hundred
milliseconds): a SIGHUP meant as "reload" must not end a process that is still starting.
"""

import signal


def main() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from exporter.cli import run  # after the signal, on purpose

    run()


if __name__ == "__main__":
    main()
