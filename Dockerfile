# chatd image: build on Debian bookworm, run on bookworm-slim as a non-root user.
# Built and checked with podman in the deploy issue; until then this file is
# the intended shape, not yet verified by a build here.
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential pkg-config xxd libuv1-dev librdkafka-dev libwslay-dev libhiredis-dev \
      libpq-dev libcjson-dev libjwt-dev libssl-dev libhttp-parser-dev uthash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make clean && make -j"$(nproc)"

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libuv1 librdkafka1 libwslay1 libhiredis0.14 libpq5 libcjson1 libjwt0 libssl3 \
      libhttp-parser2.9 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home chatd
COPY --from=build /src/build/chatd /usr/local/bin/chatd
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD curl -fs http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/chatd"]
