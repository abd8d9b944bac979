"""Reads a Pulsar topic from the beginning with the official client (pulsar-client),
so the tests check what outbox-pulsar wrote with a second, independent implementation.

Usage: read_topic.py SERVICE_URL TOPIC COUNT TIMEOUT_SECONDS
Prints one JSON object per message: topic, key, properties, payload (base64). Stops
after COUNT messages or when TIMEOUT_SECONDS pass without reaching COUNT.

Delivery is at least once: pulsar-lite now and then delivers a message to a consumer a
second time. Only the first delivery of each message (by its broker message id) is
printed and counted, so the output is the topic's content in order.
"""

import base64
import json
import sys
import time
import uuid

import pulsar

url, topic, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
consumer = client.subscribe(
    topic,
    subscription_name="outbox-test-reader-" + uuid.uuid4().hex,
    consumer_type=pulsar.ConsumerType.Exclusive,
    initial_position=pulsar.InitialPosition.Earliest,
)
deadline = time.monotonic() + timeout
seen = set()
while len(seen) < count:
    left = deadline - time.monotonic()
    if left <= 0:
        break
    try:
        msg = consumer.receive(timeout_millis=max(1, int(left * 1000)))
    except pulsar.Timeout:
        break
    consumer.acknowledge(msg)
    message_id = msg.message_id()
    position = (message_id.ledger_id(), message_id.entry_id(), message_id.partition())
    if position in seen:
        continue
    seen.add(position)
    print(
        json.dumps(
            {
                "topic": msg.topic_name(),
                "key": msg.partition_key() or None,
                "properties": msg.properties(),
                "payload": base64.b64encode(msg.data()).decode(),
            }
        ),
        flush=True,
    )
consumer.close()
client.close()
