"""Reads a Pulsar topic from the beginning with the official client (pulsar-client),
so the tests check what outbox-pulsar wrote with a second, independent implementation.

Usage: read_topic.py SERVICE_URL TOPIC COUNT TIMEOUT_SECONDS
Prints one JSON object per message: topic, key, properties, payload (base64). Stops
after COUNT messages or when TIMEOUT_SECONDS pass without reaching COUNT.
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
received = 0
while received < count:
    left = deadline - time.monotonic()
    if left <= 0:
        break
    try:
        msg = consumer.receive(timeout_millis=max(1, int(left * 1000)))
    except pulsar.Timeout:
        break
    consumer.acknowledge(msg)
    received += 1
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
