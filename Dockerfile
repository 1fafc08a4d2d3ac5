# chatd image: compiled on Debian bookworm, run on bookworm-slim as a non-root
# user with only the shared libraries chatd links. Built and smoke-tested by
# scripts/image.sh (podman, chroot isolation) in CI; docs/DEPLOY.md.
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential pkg-config xxd libuv1-dev librdkafka-dev libhiredis-dev \
      libpq-dev libcjson-dev libjwt-dev libssl-dev libhttp-parser-dev uthash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make clean && make -j"$(nproc)" && ./build/chatd --version

FROM debian:bookworm-slim
# Runtime libraries of `ldd build/chatd` (their own dependencies come with
# them); ca-certificates for TLS to Kafka or PostgreSQL. No curl: the health
# check below uses bash, which every Debian image has.
RUN apt-get update && apt-get install -y --no-install-recommends \
      libuv1 librdkafka1 libhiredis0.14 libpq5 libcjson1 libjwt0 libssl3 \
      libhttp-parser2.9 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 chatd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin chatd
COPY --from=build /src/build/chatd /usr/local/bin/chatd
# Numeric so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
EXPOSE 8080
# /healthz on the default --listen port; Kubernetes uses its own probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/chatd"]
