"""Shared pieces of the Nyx DAGs: default args and start date (defaults.py), params,
config building, and the task-group factory that turns a registry stage into
plan -> mapped shards -> commit.

Kept out of DAG parsing by .airflowignore; DAG files import it. Nothing here
touches the environment or the artifact store at import time.
"""
