"""Shared pieces of the Nyx DAGs: params, config building, and the task-group
factory that turns a registry stage into plan -> mapped shards -> commit.

Kept out of DAG parsing by .airflowignore; DAG files import it. Nothing here
touches the environment or the artifact store at import time.
"""
