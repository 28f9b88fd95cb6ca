# kvstore member image: docker build -t kvstore . && docker run -p 2379:2379 -p 2378:2378 kvstore
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 kvstore \
 && mkdir -p /var/lib/kvstore && chown kvstore /var/lib/kvstore
WORKDIR /opt/kvstore
COPY pyproject.toml README.md ./
COPY raft ./raft
COPY kvstore ./kvstore
RUN pip install --no-cache-dir .

USER kvstore
VOLUME ["/var/lib/kvstore"]
EXPOSE 2379 2380 2378
ENV KVSTORE_DATA_DIR=/var/lib/kvstore \
    KVSTORE_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    KVSTORE_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379 \
    KVSTORE_LISTEN_PEER_URLS=http://0.0.0.0:2380 \
    KVSTORE_LISTEN_CLIENT_HTTP_URLS=http://0.0.0.0:2378
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if b'true' in urllib.request.urlopen('http://127.0.0.1:2378/health', timeout=2).read() else 1)"
ENTRYPOINT ["kvstore"]
