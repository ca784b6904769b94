# hallpass image: a static-enough release binary on distroless, running as non-root.
#   docker build -t ghcr.io/hallpass-dev/hallpass:0.1.0 .
FROM rust:1.91-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin hallpass \
    && strip target/release/hallpass

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/hallpass /usr/local/bin/hallpass
# The example policy and config, so `docker run` works out of the box; Kubernetes mounts its own.
COPY config/policy.yaml /etc/hallpass/policy/policy.yaml
COPY config/hallpass.yaml /etc/hallpass/config/hallpass.yaml
USER 65532:65532
EXPOSE 9191 9192
ENTRYPOINT ["/usr/local/bin/hallpass"]
CMD ["serve", "--policy", "/etc/hallpass/policy/policy.yaml", "--grpc-listen", "0.0.0.0:9191", "--admin-listen", "0.0.0.0:9192"]
