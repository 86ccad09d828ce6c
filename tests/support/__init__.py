"""Plain helpers shared by the tests: servers, tenants, HTTP, faults, waiting.

Fixtures stay in the conftest.py files; everything a test module imports lives here.
"""
