# syntax=docker/dockerfile:1.7
# Two small non-root images from one build:
#   docker build --target syncstore -t syncstore:dev .
#   docker build --target operator  -t syncstore-operator:dev .
# Not built in this repository's CI: its machines run no Docker engine.

FROM rust:1.95-bookworm AS build
# librdkafka is built from source by the rdkafka crate: make and zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p syncstore -p syncstore-operator \
 && mkdir -p /out \
 && cp target/release/syncstore target/release/syncstore-operator /out/

# distroless/cc has glibc and libgcc, nothing else: no shell, no package
# manager, user 65532 by default.
FROM gcr.io/distroless/cc-debian12:nonroot AS syncstore
COPY --from=build /out/syncstore /usr/local/bin/syncstore
ENV SYNCSTORE_DATA_DIR=/data LOG_FORMAT=json
USER 65532:65532
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/syncstore"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/syncstore-operator /usr/local/bin/syncstore-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/syncstore-operator"]
CMD ["run"]
