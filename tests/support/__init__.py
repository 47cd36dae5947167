"""What the tests (and the service benchmarks) share: real `llfc` processes (servers), private
PostgreSQL databases and Redis servers (stores), the HTTP, model and job helpers against a running
service (api), and each test folder's fixtures' types and constants (client_service, load,
reliability, security), plus model and archive builders (batch_norm, checkpoint_archives).

Importable as ``support`` because pyproject.toml puts tests/ on pytest's pythonpath.
"""
