"""Workers: consume the stream shards, persist in one transaction, ack after COMMIT.

The path of a batch through this package: consume -> rows -> persist -> trim,
wired together in pipeline.
"""
