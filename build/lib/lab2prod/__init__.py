"""lab2prod: the library beneath the pipeline stages (tasks/), the Prefect flows (flows/) and the command."""
