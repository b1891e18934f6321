"""Nyx pipeline library: every stage of NyxQA construction and Nyx training.

Airflow-agnostic by rule: nothing in this package imports Airflow. Heavy
libraries (torch, transformers, pyarrow, httpx) are imported inside the
functions that need them so that ``nyx --help`` and DAG parsing stay fast.
"""

__version__ = "0.1.0"
