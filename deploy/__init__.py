"""Deploy: one stack start-up (stack), supervision (supervisor), the embedded services (embedded), the
waits on a running stack (waits), and how commands find a deployment (local).

`vaxline run`, the benchmarks and the load tests all start vaxline through `deploy.stack.Stack`.
"""
