# qsmflow BIDS App container.
#   docker build -t qsmflow .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out qsmflow /data /out participant
FROM python:3.11-slim AS build
WORKDIR /src
COPY . /src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 1000 qsmflow
ENV NIPYPE_NO_ET=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    TEMPLATEFLOW_HOME=/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0
USER qsmflow
WORKDIR /home/qsmflow
ENTRYPOINT ["qsmflow"]
