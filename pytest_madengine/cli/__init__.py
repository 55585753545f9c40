"""The `madengine` command: madengine's CLI (discover, build, run, report) on the same
core as the pytest plugin. build and run are pytest sessions of the plugin, run in this
process with the options translated, so perf.csv, JUnit and the manifest are written by
the very code that writes them under `pytest`. Needs the `cli` extra (Typer, Rich).
"""
