# otp-service: the HTTP API and the report jobs, one image.
# Build stage: dependencies into a virtualenv, in their own layer so code changes do not reinstall them.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

# Final stage: the virtualenv and the code, no compilers, no pip cache, a non-root user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:////app/data/otp_service.db
# WeasyPrint (each report's PDF) needs Pango and a font; its wheels bring everything else. These are the
# packages its documentation lists for Debian (the base image's distribution); HarfBuzz subsets the fonts
# embedded in each PDF (without it WeasyPrint falls back to fontTools, slower).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin otp
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY otp_service ./otp_service
COPY notebooks ./notebooks
# The only places the service writes: the default SQLite database (to try the image; deploy with
# PostgreSQL) and report output. The code stays root-owned and read-only to the service.
RUN mkdir -p /app/data /app/reports && chown otp:otp /app/data /app/reports
USER otp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# The entry point the tests start. --migrate applies pending migrations once, in this process, before
# any worker forks (Render's preDeployCommand normally has done it already; on PostgreSQL an advisory
# lock keeps two instances from migrating at once). Exec form: SIGTERM reaches Python directly.
CMD ["python", "-m", "otp_service", "serve", "--migrate"]
