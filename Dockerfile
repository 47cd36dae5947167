# LLFC Align service image: one image for the API, the GPU worker and the migrate step
# (docker-compose.yml picks the command). The base brings Python and a CUDA build of PyTorch;
# the package is installed on top of it without replacing that torch.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLFC_DATA_DIR=/data

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin llfc \
    && mkdir -p /data \
    && chown llfc:llfc /data

WORKDIR /app
COPY . /app

# Pin torch to the version already in the image, so that resolving the package's `torch>=2.4`
# can never swap the CUDA build for another wheel. Editable, so that `llfc migrate` finds
# migrations/ beside the package sources.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        > /tmp/torch-from-base-image.txt \
    && pip install --constraint /tmp/torch-from-base-image.txt --editable . \
    && rm /tmp/torch-from-base-image.txt

USER llfc
EXPOSE 8000

# No HEALTHCHECK here: the worker runs this image too and serves no HTTP. docker-compose.yml
# checks the API on /readyz.
CMD ["llfc", "api", "--host", "0.0.0.0", "--port", "8000"]
