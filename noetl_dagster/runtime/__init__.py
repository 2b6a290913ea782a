"""What runs inside an op: templates, tools, steps, pipelines, cycles."""
