FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production STATIC_ROOT=/app/staticfiles
WORKDIR /app
RUN python -m venv /app/.venv
COPY requirements.txt .
RUN /app/.venv/bin/pip install --no-cache-dir -r requirements.txt
COPY . .
RUN SECRET_KEY=build-only /app/.venv/bin/python manage.py collectstatic --noinput \
    && useradd --system --uid 1000 gatehouse && mkdir -p /app/var && chown -R gatehouse /app/var
USER gatehouse
EXPOSE 8000
CMD ["bash", "scripts/serve"]
