# One image for web, worker and beat (the deployment issue hardens it: multi-stage, non-root, healthcheck).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home tradesite && mkdir -p /var/lib/tradesite && chown tradesite /var/lib/tradesite
USER tradesite
EXPOSE 8000
CMD ["gunicorn", "tradesite.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
