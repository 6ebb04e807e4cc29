# Image for the ingress and the workers (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
# The exact versions of requirements.lock (`bash scripts/lock` regenerates it), then the project alone.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY packager ./packager
COPY streams ./streams
COPY projections ./projections
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && useradd --system --create-home packager \
    && mkdir -p /var/lib/ckanpackager && chown packager /var/lib/ckanpackager
USER packager
ENV PACKAGER_STORE_DIRECTORY=/var/lib/ckanpackager/store
ENTRYPOINT ["packager"]
