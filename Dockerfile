# syntax=docker/dockerfile:1
# qsmflow BIDS App image. qsmflow is installed from the wheel of this repository (the
# `pip install .` path CI and the README use); every template and atlas file it uses is
# prefetched into /templateflow by `qsmflow fetch-templates`, and the SUIT -> MNI transform
# of the cerebellar atlas is computed at build time, so the image runs offline.
#
#   docker build -t qsmflow .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out qsmflow /data /out participant
#   apptainer build qsmflow.sif docker-daemon://qsmflow:latest
#
# Building needs internet access (PyPI and templateflow's S3 bucket); running does not.

# --- build: the wheel of this repository ---------------------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . /src
# A build/ folder left by a local build would put stale modules into the wheel.
RUN rm -rf build dist ./*.egg-info \
    && pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: python:3.11-slim + the wheel (shared by the template stage and the image) ----
# antspyx, numba/llvmlite and matplotlib wheels need only libstdc++, libgcc and zlib at run
# time, which the slim image has; no compiler or system package is installed.
FROM python:3.11-slim AS runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY --from=build /wheels /wheels
RUN pip install /wheels/qsmflow-*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 1000 --shell /bin/bash qsmflow \
    && python -c "import ants, numba, qsmflow.cli"
# One environment for the prefetch below and for every run of the image.
ENV NIPYPE_NO_ET=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    TEMPLATEFLOW_HOME=/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    QSMFLOW_CACHE=/opt/qsmflow/cache

# --- templates: prefetch with the very qsmflow and templateflow of the image ---------------
# The queries come from qsmflow itself (default template and resolution, bids_specs/
# atlases.json); --transforms computes the SUIT -> MNI152NLin2009cAsym registration into
# $QSMFLOW_CACHE exactly as a run would. Made writable for any user id, so that
# `docker run -u ...` can still add templates or transforms when online.
FROM runtime AS templates
RUN qsmflow fetch-templates --transforms \
    && chmod -R a+rwX /templateflow /opt/qsmflow

# --- image ---------------------------------------------------------------------------------
FROM runtime
COPY --from=templates /templateflow /templateflow
COPY --from=templates /opt/qsmflow /opt/qsmflow
# HOME (~/.nipype, matplotlib's cache) usable by any user id (docker run -u UID:GID).
ENV HOME=/home/qsmflow
RUN chmod -R go=u /home/qsmflow
LABEL org.opencontainers.image.title="qsmflow" \
      org.opencontainers.image.description="BIDS App for quantitative susceptibility mapping" \
      org.opencontainers.image.licenses="Apache-2.0"
USER qsmflow
WORKDIR /home/qsmflow
ENTRYPOINT ["qsmflow"]
