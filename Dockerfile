# glassloop built from this repository: the dashboard (vite), the Rust extension
# (maturin, release), then a slim runtime with the wheel, the examples and the
# benchmarks. Used by docker-compose.yml for the `demo` and `bench` services.
#
#   docker build -t glassloop:dev .
#   docker run --rm -p 127.0.0.1:7070:7070 -e GLASSLOOP_TOKEN=secret glassloop:dev
ARG PYTHON_VERSION=3.12

# --- 1. The dashboard, embedded into the inspector at build time (inspector/build.rs).
FROM node:22-bookworm-slim AS ui
WORKDIR /src/web-ui
COPY web-ui/package.json web-ui/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web-ui/ ./
RUN npm run build

# --- 2. The wheel: Rust (stable, minimal profile) + maturin, one release build.
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
RUN pip install --no-cache-dir "maturin>=1.5,<2"
WORKDIR /src
# Every workspace member's sources (Cargo.toml lists loop-core, inspector, benches/loadgen).
COPY Cargo.toml Cargo.lock pyproject.toml ./
COPY loop-core loop-core
COPY inspector inspector
COPY benches benches
COPY python python
COPY --from=ui /src/web-ui/dist web-ui/dist
RUN maturin build --release --locked --interpreter python3 --out /wheels

# --- 3. Runtime: the wheel, the loops the benchmark compares against, examples, benches.
FROM python:${PYTHON_VERSION}-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl "uvloop>=0.19" && (pip install --no-cache-dir "rloop>=0.1" || true)
WORKDIR /app
COPY examples examples
COPY benches benches
RUN useradd --create-home --uid 10001 glassloop && chown -R glassloop /app
USER glassloop
EXPOSE 7070
# A non-loopback inspector address needs GLASSLOOP_TOKEN (the launcher refuses without it).
CMD ["python", "-m", "glassloop", "--inspect", "0.0.0.0:7070", "examples/demo.py", "--seconds", "31536000"]
