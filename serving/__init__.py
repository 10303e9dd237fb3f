"""The BentoML service (service.py, bentofile.yaml). Installed as `lifecycle._service` (see
pyproject.toml), so `lifecycle serve` and `lifecycle build` find it in a wheel install as in a checkout."""
