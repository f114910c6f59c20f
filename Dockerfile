# The project's image: the cna_tf package, the MLproject steps (pipelines/, configs/) and their
# dependencies, with the code in /app. Used by MLflow's kubernetes backend through k8s/MLproject
# (see docs/scaling.md) and good for any container run of a step:
#
#   docker build -t registry.example.com/cna-tf/cna-tf:latest .
#   docker build --build-arg TENSORFLOW="tensorflow[and-cuda]" -t ...:gpu .   # NVIDIA GPUs
#   docker run --rm -e MLFLOW_TRACKING_URI=http://mlflow:5000 IMAGE \
#       python pipelines/train.py --arch mlp --dataset digits --epochs 2
FROM python:3.11-slim

# "tensorflow" (CPU) or "tensorflow[and-cuda]" (CUDA and cuDNN from PyPI; needs the NVIDIA
# driver and device plugin on the node)
ARG TENSORFLOW=tensorflow

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg

WORKDIR /app

# dependencies first, so that a code change does not reinstall TensorFlow
COPY pyproject.toml README.md ./
COPY cna_tf/__init__.py cna_tf/__init__.py
RUN pip install "${TENSORFLOW}" "psycopg[binary]" boto3 && pip install . \
    && pip uninstall -y cna_tf

COPY cna_tf cna_tf
RUN pip install --no-deps .
COPY MLproject conda.yaml ./
COPY pipelines pipelines
COPY configs configs
COPY k8s k8s

# an unprivileged user; /backup and /data are mounted volumes in the Kubernetes job
RUN useradd --create-home --uid 1000 cna && mkdir -p /backup /data && chown cna /backup /app
USER cna

CMD ["python", "-m", "cna_tf.demo"]
