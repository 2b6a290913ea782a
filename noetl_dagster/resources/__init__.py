"""Dagster resources the compiled jobs require: ``noetl_credentials`` (:class:`~noetl_dagster.resources.credentials.CredentialsResource`)."""
