"""The Gelato conformance suite: checks a live pool or main net against docs/gelato/, case by
case (list: docs/gelato/conformance.md). The command is galaxynode.cli.conformance; the cases
are in cases_*.py, run by runner.py through probe.py."""
