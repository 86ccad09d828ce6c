"""Installs the console (console.admin_site.ConsoleAdminSite) as Django's default admin site.

Kept apart from admin_site.py: app configs are imported before the models are ready.
"""

from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    default_site = "console.admin_site.ConsoleAdminSite"
