# syntax=docker/dockerfile:1
# fraudstream's one image: every container of docker-compose.yml runs a `fraudstream`
# sub-command in it (ENTRYPOINT), exactly as `fraudstream up` runs them natively.
#
# build:   the package and its dependencies in a virtual environment, and Spark's Kafka
#          connector jars resolved from Maven Central by `fraudstream setup` (Maven stays
#          in this stage).
# runtime: slim Python, the Java runtime the Spark engine needs, the virtual environment and
#          the jars; runs as an unprivileged user.
# The base is Debian 12 (bookworm) for its openjdk-17, and Python 3.11 as in the tests.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

# Debian's slim images leave out man pages, but the Java packages install links into them.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends maven openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from the metadata alone (a stub package built elsewhere, so that no
# stale build output of it can shadow the real source), so that editing the source does not
# download them again. The versions are pyproject.toml's (DL3013 is about naming packages
# from the registry; this installs the project itself).
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p /tmp/stub/src/fraudstream \
    && cp pyproject.toml README.md /tmp/stub/ \
    && touch /tmp/stub/src/fraudstream/__init__.py \
    && pip install --no-cache-dir '/tmp/stub[spark]' \
    && rm -rf /tmp/stub

COPY src ./src
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps --force-reinstall .

# Spark's Kafka connector into the image's jar cache. The broker runs in its own container,
# so naming it (kafka.bootstrap_servers) skips the broker's jars.
ENV FRAUDSTREAM_CACHE_DIR=/opt/fraudstream/cache
RUN FRAUDSTREAM_KAFKA__BOOTSTRAP_SERVERS=kafka:19092 fraudstream setup \
    && rm -rf /root/.m2


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="fraudstream" \
      org.opencontainers.image.description="Real-time card-fraud detection: Kafka, stateful features, gradient-boosted scoring, exactly-once PostgreSQL sink, Streamlit dashboard."

# The Spark engine's JVM (the local engine, simulator and dashboard need no Java).
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 fraudstream \
    && useradd --uid 10001 --gid fraudstream --create-home --shell /usr/sbin/nologin fraudstream \
    && mkdir -p /var/lib/fraudstream/models \
    && chown -R fraudstream:fraudstream /var/lib/fraudstream

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/fraudstream/cache /opt/fraudstream/cache

# State (simulator resume points, Spark checkpoints) and models live in volumes mounted
# under the state directory; the jar cache is read-only image content.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FRAUDSTREAM_STATE_DIR=/var/lib/fraudstream \
    FRAUDSTREAM_CACHE_DIR=/opt/fraudstream/cache

USER 10001:10001
WORKDIR /var/lib/fraudstream
EXPOSE 8501 8000 4040

ENTRYPOINT ["fraudstream"]
CMD ["--help"]
