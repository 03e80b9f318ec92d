# One image, one binary: every labctl role (node, manager, controller, scrape, smtp) runs from it.
#
#   docker build -t labctl .                 # or: docker compose up --build
#   docker run --rm labctl --help
#
# Stage 1 builds labctl with every database backend (SQLite bundled, PostgreSQL, MySQL/MariaDB);
# stage 2 is Debian slim with only the libraries the binary links at run time.
# Both stages are Debian bookworm: the binary needs the glibc, libpq and libmariadb it was built against.
# No `# syntax=` line: BuildKit would pull that frontend from a registry; its built-in one builds
# this file offline, from local base images (scripts/docker-env makes them where none can be pulled).

# Must equal the channel of rust-toolchain.toml (tests/docker.rs checks it).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS builder

# Headers and pkg-config for the PostgreSQL (libpq) and MySQL (libmariadb) client libraries.
# Debian's versions are not pinned: a pin would break the build at the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev default-libmysqlclient-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

# No debug info in the image's binary (Cargo.toml keeps line tables for local profiling).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never

WORKDIR /build

# Dependencies in a layer of their own, rebuilt only when the manifest, the lock file or the
# toolchain changes: build them against a placeholder crate. The placeholder binary exits 1,
# so the check after the real build below catches a stale placeholder.
COPY rust-toolchain.toml Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() { std::process::exit(1) }' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --features postgres,mysql \
    && rm -rf src

# The crate itself. COPY keeps the files' old modification times, so touch the crate roots:
# cargo must not take the placeholder's build for the real one.
COPY migrations ./migrations
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --features postgres,mysql \
    && ./target/release/labctl --version


FROM debian:bookworm-slim

# The run-time libraries only: libpq5 (PostgreSQL), libmariadb3 (MySQL/MariaDB), CA certificates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 libmariadb3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user that owns /data, the node data volume (Raft log and SQLite database).
RUN groupadd --system --gid 10001 labctl \
    && useradd --system --uid 10001 --gid labctl --home-dir /data --no-create-home --shell /usr/sbin/nologin labctl \
    && mkdir /data \
    && chown labctl:labctl /data

COPY --from=builder /build/target/release/labctl /usr/local/bin/labctl
# The container settings (node hosts node1 … node5, bind 0.0.0.0, data in /data); environment
# variables (LABCTL_*) and flags still override every key.
COPY config/docker.toml /etc/labctl/labctl.toml

# Fails the build if a shared library the binary needs is missing from this stage.
RUN ["labctl", "--version"]

ENV LABCTL_CONFIG=/etc/labctl/labctl.toml

USER 10001:10001
# A node keeps its Raft log and database here: mount a volume on /data to keep them (the compose
# lab mounts one per node). No VOLUME instruction: it would give every container of the image,
# the manager's and the controller's too, an anonymous volume that `docker compose down` leaves.
WORKDIR /data

# Raft and control datagrams, the node HTTP API, the manager HTTP API.
EXPOSE 5555/udp 8000 8080

# A node's own /healthz (slim has no curl: labctl GETs it). The manager overrides the URL.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["labctl", "health"]

ENTRYPOINT ["labctl"]
CMD ["--help"]
