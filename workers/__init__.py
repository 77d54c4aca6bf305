"""Workers: consume the stream shards, persist in one transaction, ack after COMMIT; certify; review.

The path of a batch through this package: consume -> rows -> persist -> trim,
wired together in pipeline; the run loop and retry every consumer shares are in loop.
"""
