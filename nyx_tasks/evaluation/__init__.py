"""Evaluation library for the `evaluate` stage (arXiv 2510.17354, "Experiments"): the metrics
(`metrics`: recall@k and MRR against the gold chunk id, accuracy / F1 / EM means, bootstrap
confidence intervals) and the report (`report`: the long results table, its Markdown summary and
its accuracy-vs-Matryoshka-dimension plots). Plain functions: no Airflow, no model code."""
