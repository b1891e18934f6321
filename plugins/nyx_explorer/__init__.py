"""NyxQA explorer: an Airflow 3 plugin showing a Nyx artifact root in the Airflow UI.

explorer_plugin.py  the AirflowPlugin (what Airflow loads): FastAPI app at /nyx + nav entry
app.py              routes and pages          auth.py   Airflow's user + access check
data.py             reading manifests, tables, images and the report (no Airflow)
report_md.py        report.md to HTML (markdown-it-py, raw HTML off), plot links to the plot route
"""
