"""Back-entry: a site's CSV or XLSX file of doses, a second way into the stream beside ingest.

    readers (CSV, XLSX via xlsx) --rows (pure: header, row -> dose)--> batches
      --senders (the stream, as ingest enqueues; or POST /v1/doses)--> receipts
    report: the rejected rows beside the input, and the state --resume goes on from
    importer: the run; template: the file a site fills in
"""
