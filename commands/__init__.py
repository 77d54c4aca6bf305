"""The `vaxline` command: one module per command group (services, sites, keys, records, imports, loadtest).

It sits at the top of the layers: it starts and talks to everything below it, and nothing imports it.
"""
