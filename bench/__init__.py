"""Benchmark harness for fiboserver: `make bench` (README "Performance"), run as
`python -m bench.run` from the repository root.

The modules, by concern:
  run         the CLI (`python -m bench.run`): options, the sections to run, results
  servers     PROD config, server variants (service, ceiling, Flask floor), checks
              that a comparison is fair; servers start through tests.support.serverproc
  wrk         the wrk client: command line, summary parsing, a run's idle worker
  procstat    CPU and memory of processes and of the machine, from /proc
  pairs       alternating rounds of two (or more) servers under one load; ratios
  throughput  the cached and uncached pairs against the ceiling
  proxy       4 long-lived keep-alive connections against the usual 16
  bign        cold F(n) against the iterative loop
  startstop   ready time, idle and loaded stop time
  memory      worker RSS over walks of large n against cache_max_bytes
  targets     the targets a run is judged by, each measured, met or not
  report      notes and the Markdown of latest.md; writing results
  compare, profile, hotpath  tools for one question each (their docstrings)
  ceiling, flask_floor       the apps the service is compared with
"""
