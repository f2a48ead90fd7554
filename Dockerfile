# yadtq worker (default target) and JupyterLab images for docker-compose.yml.
#   docker build -t yadtq-worker:0.1.0 .                  # python -m worker_node
#   docker build --target jupyter -t yadtq-jupyter:0.1.0 .
# Both read YADTQ_BOOTSTRAP and YADTQ_REDIS_URL (see docs/configuration.md).

FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE MANIFEST.in ./
COPY yadtq ./yadtq
COPY worker_node ./worker_node
RUN pip install . \
    && useradd --create-home --uid 1000 yadtq
WORKDIR /home/yadtq

FROM base AS jupyter
# The notebook side (pandas, matplotlib, ipywidgets) only where notebooks run.
RUN pip install "/src[notebook]" "jupyterlab>=4"
COPY --chown=yadtq:yadtq notebooks ./notebooks
USER yadtq
EXPOSE 8888
# The login token comes from $JUPYTER_TOKEN (Jupyter Server reads it).
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", \
     "--ServerApp.root_dir=/home/yadtq/notebooks"]

FROM base AS worker
USER yadtq
# SIGTERM (docker stop) lets running tasks finish for up to 30 s, then hands the rest back.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker_node"]
