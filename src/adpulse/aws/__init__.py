"""adpulse on AWS Lambda: the entry points of the deployable stack (``deploy/aws``).

- :mod:`.producer`: ``adpulse.aws.producer.handler``, the original's mock producers (the
  built-in generator on a schedule, or forwarded collector requests) into the Kinesis
  streams;
- :mod:`.consumer`: ``adpulse.aws.consumer.handler``, a Kinesis event-source mapping's
  deliveries processed as micro-batches and committed exactly once;
- :mod:`.delivery`: the delivered records as the processor reads them;
- :mod:`.settings`: the functions' settings, the warehouse URL from Secrets Manager.

Deploying, packaging (``deploy/aws/footprint.py``), costs and the cold start:
``docs/aws.md``.
"""
