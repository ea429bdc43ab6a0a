"""The side-by-side NBD benchmark behind bench/run.py.

Modules, each with one job:
  images     -- the images every server is given, prepared on tmpfs
  servers    -- the servers under test: command lines, start, readiness, stop
  workloads  -- the workloads (nbdcopy and fio) and how each is measured
  machine    -- what the run was made on (CPU, kernel, tool versions, load)
  report     -- the result tables, as markdown
"""
