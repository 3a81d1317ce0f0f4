"""Azure Personalizer compatibility: its SDKs' apps work against this service unchanged
(endpoint and key aside). `routes.routers()` are included by the app; see routes.py."""
