"""What runs inside an op, without Dagster: the step interpreter (loops, pipelines, cycles) and the tool executors."""
