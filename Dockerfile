# agw: twistd -n agw -f /etc/agw/config.yaml, as a non-root user.
#   docker build -t agw .
#   docker run -e OPENAI_API_KEY -p 3000:3000 -p 15020:15020 -p 15021:15021 agw
# Mount your own config over /etc/agw/config.yaml; deploy/kubernetes/ does it with a ConfigMap.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agw ./agw
COPY twisted ./twisted
# [postgres]: budgets shared by several replicas live in PostgreSQL (config.database.url);
# [tracing]: config.tracing's OTLP exporter.
RUN pip install '.[postgres,tracing]' && rm -rf /src \
  # Twisted's plugin cache, written now: the root filesystem is read-only at run time.
  && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin agw
COPY config.yaml /etc/agw/config.yaml
WORKDIR /var/lib/agw
RUN chown agw /var/lib/agw
USER 10001

# 3000: traffic (binds[0].port); 15020: /metrics (config.statsAddr); 15021: /healthz/ready (config.readinessAddr).
EXPOSE 3000 15020 15021
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:15021/healthz/ready', timeout=2)"]

# --pidfile=: no pid file (the process is PID 1's child in the container; nothing reads it).
# SIGTERM drains: sessions get --drain-period seconds, then close with 1001.
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "agw"]
CMD ["-f", "/etc/agw/config.yaml"]
