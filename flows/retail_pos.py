"""Retail store: point-of-sale totals per store per minute, safe through uplink outages.

Every sale is a reading; per store and minute the flow publishes the number of sales,
the takings and the items sold. The store's uplink is not reliable: records are written
to the local durable outbox first (SQLite, fsync'ed), so while the broker is unreachable
they keep flowing into it, and they drain to Kafka, in order per store and without
duplicates, when it returns (``edgeflow status`` shows the outbox depth).

    edgeflow deploy flows/retail_pos.py --kafka-bootstrap broker:9092
    EDGEFLOW_SIM_SPEED=60 edgeflow run flows/retail_pos.py --for 1m

Simulator profile: :func:`edgeflow.connectors.sim_retail.pos` (20 stores, opening hours,
busiest at noon and 18:00, log-normal basket values).
"""

from edgeflow import Flow, agg, window
from edgeflow.connectors import kafka, simulate

flow = Flow("retail-pos")
sales = flow.source(
    simulate.pos(stores=20, seed=2, start="2026-03-02T11:00:00Z", **simulate.from_env()),
    key="store",
    time="ts",
    lateness="2s",
)
per_minute = sales.window(
    window.tumbling("1m"),
    agg.count(),
    agg.sum("amount"),
    agg.sum("items"),
    idle="30s",
    name="sales_per_minute",
)
per_minute.to(kafka.sink("edgeflow.retail.sales-per-minute"), name="sales_to_kafka")
sales.dead_letters.to(kafka.sink("edgeflow.retail.dead-letters"), name="dead_letters_to_kafka")
