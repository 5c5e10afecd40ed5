# churn-detector image: `docker build -t churn-detector .`
# The entrypoint is the CLI; the default command runs the streaming worker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY detector ./detector
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data detector \
    && mkdir -p /data \
    && chown detector /data

USER detector
WORKDIR /data
ENV DETECTOR_SERVICE_STATE_DIR=/data
VOLUME ["/data"]
EXPOSE 6066

ENTRYPOINT ["churn-detector"]
CMD ["worker"]
