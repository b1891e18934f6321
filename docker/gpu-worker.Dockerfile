# The GPU Celery worker (queue `gpu`): CUDA, torch, vLLM, DeepSpeed, faiss-gpu,
# Airflow's Celery worker and this project. Runs synthesis (vLLM offline engine),
# embedding/mining and training (torchrun + DeepSpeed ZeRO-2).
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04

ARG AIRFLOW_VERSION=3.3.2
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common git curl \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/nyx
COPY pyproject.toml README.md ./
COPY nyx_tasks ./nyx_tasks
COPY configs ./configs
COPY dags ./dags
COPY plugins ./plugins
# torch first: DeepSpeed ships only an sdist whose build imports torch, so it is built against
# the installed CUDA torch without isolation (an isolated build would fetch another torch).
RUN pip install --upgrade pip \
 && pip install "torch==2.14.1" "torchvision==0.29.1" \
 && DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==0.19.8" \
 && pip install "apache-airflow[celery]==${AIRFLOW_VERSION}" "celery[redis]>=5.5,<5.7" psycopg2-binary asyncpg \
      -e ".[gpu]"

RUN useradd --uid 50000 --gid 0 --create-home airflow
USER airflow
ENV NYX_CONFIG_DIR=/opt/nyx/configs \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/nyx/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/nyx/plugins \
    HF_HOME=/models/hf
CMD ["airflow", "celery", "worker", "--queues", "gpu"]
