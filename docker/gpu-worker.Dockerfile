# The GPU Celery worker (queue `gpu`): CUDA, torch, vLLM, DeepSpeed, faiss-gpu,
# Airflow's Celery worker and this project. Runs synthesis (vLLM offline engine),
# embedding/mining and training (torchrun + DeepSpeed ZeRO-2).
# CUDA 13.0: vLLM 0.33's wheel and the torch it pins are CUDA 13 builds (torch pulls cuda-toolkit
# 13.0), and DeepSpeed's ops compile on first use with this nvcc, whose major version must be torch's.
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu22.04

ARG AIRFLOW_VERSION=3.3.2
# The image's pins; tests/test_gpu_install.py reads them (and the pip commands below) and has pip
# resolve the whole set against PyPI for this platform. vLLM pins torch exactly: TORCH_VERSION and
# TORCHVISION_VERSION are what the vllm==VLLM_VERSION wheel requires, not the CPU set-up's torch
# (scripts/cpu-constraints.txt). Every pip command repeats the torch pin, so none can move it.
ARG VLLM_VERSION=0.33.0
ARG TORCH_VERSION=2.14.0
ARG TORCHVISION_VERSION=0.29.0
ARG DEEPSPEED_VERSION=0.19.8
ARG FAISS_GPU_VERSION=1.15.1
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# hadolint ignore=DL3008
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
# Then vLLM, faiss-gpu (Meta's wheels, CUDA 12 runtime from pip), Airflow's Celery worker and
# this project with its gpu extra, in one resolve that keeps torch and DeepSpeed where they are.
RUN pip install "pip>=26" \
 && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" "torch==${TORCH_VERSION}" \
 && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "vllm==${VLLM_VERSION}" \
      "deepspeed==${DEEPSPEED_VERSION}" "faiss-gpu==${FAISS_GPU_VERSION}" \
      "apache-airflow[celery]==${AIRFLOW_VERSION}" "celery[redis]>=5.5,<5.7" \
      "psycopg2-binary>=2.9" "asyncpg>=0.30" -e ".[gpu]"

RUN useradd --uid 50000 --gid 0 --create-home airflow
USER airflow
ENV NYX_CONFIG_DIR=/opt/nyx/configs \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/nyx/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/nyx/plugins \
    HF_HOME=/models/hf
CMD ["airflow", "celery", "worker", "--queues", "gpu"]
