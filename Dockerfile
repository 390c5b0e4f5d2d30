# An edgeflow node: `docker compose up` runs `edgeflow deploy` on a flow from flows/.
FROM python:3.12.8-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY edgeflow ./edgeflow
COPY connectors ./connectors
COPY flows ./flows
RUN pip install --no-cache-dir ".[mqtt]"
ENTRYPOINT ["edgeflow"]
CMD ["deploy", "flows/quickstart.py"]
