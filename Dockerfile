# Image for the ingress and the workers (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY packager ./packager
COPY streams ./streams
COPY projections ./projections
RUN pip install --no-cache-dir . && useradd --system --create-home packager \
    && mkdir -p /var/lib/ckanpackager && chown packager /var/lib/ckanpackager
USER packager
ENV PACKAGER_STORE_DIRECTORY=/var/lib/ckanpackager/store
ENTRYPOINT ["packager"]
