# LLFC Align service image: one image for the API, the GPU worker and the migrate step
# (docker-compose.yml picks the command).
#
# A slim Python base plus PyPI's torch and torchvision wheels, pinned as a pair: their Linux
# x86_64 builds are CUDA builds that bring the CUDA runtime as nvidia-* wheels, so the host
# needs only the NVIDIA driver. torch must be at least 2.10 (older torch.load can be made to run
# code or corrupt memory by an uploaded file; see llfc_core/checkpoints.py), and 2.13.0 is what
# dev and CI run (scripts/install). Pinning here, rather than taking a pytorch/pytorch image,
# keeps the exact torch the tests ran and a torchvision built for it.
FROM python:3.11-slim

# PYTORCH_NVML_BASED_CUDA_CHECK: torch.cuda.is_available() asks NVML instead of initialising
# CUDA, so no process creates a CUDA context by asking; one made in the worker's main process
# before it forks its pool children would leave them unable to use the GPU.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 \
    LLFC_DATA_DIR=/data

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin llfc \
    && mkdir -p /data \
    && chown llfc:llfc /data

WORKDIR /app
COPY . /app

# torch first, pinned, so resolving the package's `torch>=2.10` keeps it. Editable, so that
# `llfc migrate` finds migrations/ beside the package sources.
# The client distribution (clients/python, which owns the `llfc` command) before the server
# package that depends on it; the service renders plots, hence the plots extra.
RUN pip install "torch===2.13.0" "torchvision==0.28.0" \
    && pip install --editable clients/python \
    && pip install --editable '.[plots]'

USER llfc
EXPOSE 8000

# No HEALTHCHECK here: the worker runs this image too and serves no HTTP. docker-compose.yml
# checks the API on /readyz.
CMD ["llfc", "api", "--host", "0.0.0.0", "--port", "8000"]
