# syntax=docker/dockerfile:1
# mod_lbmethod_rs on Debian 12's apache2, installed from its Debian package.
#
#   docker build -t mod-lbmethod-rs .
#   docker run -d --rm --name lbrs -p 8080:80 mod-lbmethod-rs
#   curl http://127.0.0.1:8080/            # answered by app1, app2 or app3 in a 1:2:3 ratio
#   docker exec lbrs apache2-healthcheck && echo healthy
#
# Docker Engine 23 or later (Docker's own packages: docker-ce, docker-buildx-plugin,
# docker-compose-plugin), whose default builder, BuildKit, knows RUN --mount. With Debian 12's
# docker.io (20.10), build with `DOCKER_BUILDKIT=1 docker build -t mod-lbmethod-rs .`. The
# syntax line above makes BuildKit fetch the Dockerfile frontend from Docker Hub; for a build
# without a registry, delete it (Docker 23 or later: the built-in frontend is enough).
#
# Two stages. The build stage turns this tree into libapache2-mod-lbmethod-rs_*.deb with
# scripts/build-deb.sh. The runtime stage is debian:bookworm-slim with apache2 and that
# package: no compiler, no Rust. Each RUN is one script, and tests/debian_package.rs runs the
# same scripts outside Docker (the package build, its installation and configuration, the
# entrypoint and the health check); docs/install.md says what that covers and what it cannot.
#
# With a package built already (scripts/build-deb.sh), the build stage can be replaced by a
# named build context of the same name, laid out by docker/build-context.sh; nothing is
# compiled and no Rust image is pulled (needs buildx: Docker 23 or later, or podman):
#   docker/build-context.sh /tmp/lbrs-build
#   docker buildx build --build-context build=/tmp/lbrs-build -t mod-lbmethod-rs .
#   podman build --format=docker --build-context build=/tmp/lbrs-build -t mod-lbmethod-rs .
# (podman: --format=docker keeps HEALTHCHECK. Without a registry, tests/container.rs adds
# --pull=never, to use the base image it imported, and --network=host, so that the RUN's apt
# reaches Debian's mirror through the host's network; docs/install.md shows the whole recipe.)
#
# The site is httpd-conf/example.conf with its members pointed at five small demo backends
# that the same apache2 serves on 127.0.0.1:8081-8085. For real use, mount your own site over
# /etc/apache2/sites-available/lbmethod-rs-example.conf with your servers as members (and
# ProxyPass "/lb-status" "!" before ProxyPass "/": the health check asks for that page).
# The status page and balancer-manager answer local requests only:
#   docker exec lbrs apache2-healthcheck     # or bash's /dev/tcp: docs/install.md

# Debian 12 with Rust (rustup's, 1.88 or later: Cargo.toml's rust-version) and its C toolchain.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Installs the build dependencies (apache2-dev, libclang-dev, debhelper, dpkg-dev, lintian),
# builds the package against this stage's apache2-dev, and checks it with lintian.
RUN scripts/build-deb.sh

FROM debian:bookworm-slim
# apache2 and the package, then the image's Apache configuration. The build stage's tree is
# mounted for this step only, so none of it stays in the image. The step finds the package in
# /src/target/debian/, where scripts/build-deb.sh (or docker/build-context.sh) left it.
RUN --mount=type=bind,from=build,source=/src,target=/src /src/docker/setup-image.sh --image
COPY docker/entrypoint.sh /usr/local/bin/apache2-foreground
COPY docker/healthcheck.sh /usr/local/bin/apache2-healthcheck

EXPOSE 80
# Apache's graceful stop: `docker stop` lets requests in flight finish (within its timeout,
# 10 s unless `docker stop -t` says otherwise).
STOPSIGNAL SIGWINCH
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["apache2-healthcheck"]
# Apache is process 1 (the script execs it).
ENTRYPOINT ["apache2-foreground"]
